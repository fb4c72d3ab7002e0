// The API docs page: Swagger UI over this node's own /openapi.json (no other origin is reached).
"use strict";
window.addEventListener("load", () => {
  window.ui = window.SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    // Keys typed into "Authorize" stay in this tab only.
    persistAuthorization: false,
    validatorUrl: null,
  });
});
