// Starts Swagger UI on the page served by dtq/net/docs.py. A file rather than an inline
// script, so the page works under a Content-Security-Policy without 'unsafe-inline'.
"use strict";
window.addEventListener("load", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    domNode: root,
    deepLinking: true,
    displayRequestDuration: true,
    // No badge fetched from validator.swagger.io: the docs work offline.
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
