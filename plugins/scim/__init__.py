"""The SCIM 2.0 server plugin (RFC 7643, RFC 7644): provisioning of users and groups.

For now the framework-free layers: filters and PATCH paths parsed
(``filters``, ``paths``), and users as SCIM ``User`` resources whose filters
run as the core's SQL (``users``). The hookimpls arrive with the resources.
"""
