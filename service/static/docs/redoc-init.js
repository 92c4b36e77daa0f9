// Starts ReDoc on /redoc. An external file, not an inline <script>: the page's
// Content-Security-Policy allows scripts from the service itself only (script-src 'self').
// The OpenAPI URL comes from the container's data-openapi-url, relative to the page.

const container = document.getElementById("redoc");
Redoc.init(new URL(container.dataset.openapiUrl, document.baseURI).href, {}, container);
