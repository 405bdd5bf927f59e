"""The SCIM 2.0 server plugin (RFC 7643, RFC 7644): provisioning of users and groups.

For now only the framework-free parsing layer (filters, PATCH paths); the hookimpls arrive later.
"""
