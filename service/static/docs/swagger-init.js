// Starts Swagger UI on /docs. An external file, not an inline <script>: the page's
// Content-Security-Policy allows scripts from the service itself only (script-src 'self').
// The OpenAPI URL comes from the container's data-openapi-url, relative to the page (works
// behind a proxy that mounts the service under a prefix).

const container = document.getElementById("swagger-ui");
window.ui = SwaggerUIBundle({
  url: new URL(container.dataset.openapiUrl, document.baseURI).href,
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  validatorUrl: null, // never send the description to validator.swagger.io
  presets: [SwaggerUIBundle.presets.apis],
});
