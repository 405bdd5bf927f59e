// Starts Swagger UI on /docs (frontends/http/docs.py). A file, not an inline
// script: the page's Content-Security-Policy runs scripts from this origin only.
"use strict";

SwaggerUIBundle({
  url: "/api/v1/openapi.json",
  dom_id: "#swagger-ui",
  presets: [SwaggerUIBundle.presets.apis],
  // Just the document: no top bar for loading another one.
  layout: "BaseLayout",
  // The default validator is swagger.io's: it would send our document off-site.
  validatorUrl: null,
  deepLinking: true,
  // The key pasted into "Authorize" lives in this tab only, not in localStorage.
  persistAuthorization: false,
  displayRequestDuration: true,
});
