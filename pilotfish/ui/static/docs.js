// Starts Swagger UI on /v1/docs from the package's own files; "Try it out" sends the
// status UI's token (sessionStorage, this tab only) as a bearer token.
"use strict";
(() => {
  const root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.spec,
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null, // no badge fetched from the internet
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    requestInterceptor: (request) => {
      const token = sessionStorage.getItem("pilotfish.token");
      if (token && !request.headers.Authorization) {
        request.headers.Authorization = "Bearer " + token;
      }
      return request;
    },
  });
})();
