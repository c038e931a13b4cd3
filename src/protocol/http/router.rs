//! A small router: method and path (exact, or a prefix ending in `*`) to a handler, which runs
//! on the event loop or, when marked, on the worker pool.

use std::sync::Arc;

use super::message::{Request, Response};
use crate::protocol::ws::WebSocketRoute;

/// A request handler. It runs on the event loop unless its route is offloaded, so it must be
/// quick there: anything slow belongs on the worker pool ([`Router::route_offloaded`]).
pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// How a route's handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runs {
    /// On the connection's own thread (the event loop, or the blocking handler thread).
    Inline,
    /// On the worker pool; its answer keeps its place in the pipeline.
    Offloaded,
}

struct Route {
    method: String,
    path: String,
    prefix: bool,
    runs: Runs,
    handler: Handler,
}

impl Route {
    /// Whether this route's path (exact, or a prefix) takes `path`.
    fn matches(&self, path: &str) -> bool {
        if self.prefix {
            path.starts_with(self.path.as_str())
        } else {
            path == self.path
        }
    }
}

/// Routes requests to handlers; the first route that matches wins. A `HEAD` request is routed
/// as `GET` and answered without the body.
///
/// ```
/// use socketserver::protocol::http::{Response, Router};
///
/// let router = Router::new()
///     .get("/", |_| Response::text(200, "Hello, World!"))
///     .get("/static/*", |request| Response::text(200, format!("file {}", request.path())))
///     .route_offloaded("POST", "/hash", |request| {
///         Response::text(200, format!("{} bytes hashed", request.body().len()))
///     });
/// assert!(router.find("GET", "/static/a.css").is_some());
/// assert!(router.find("HEAD", "/").is_some());
/// assert!(router.find("GET", "/nowhere").is_none());
/// ```
#[derive(Default, Clone)]
pub struct Router {
    routes: Vec<Arc<Route>>,
    /// WebSocket routes, by path: an upgrade request addressed to one becomes a WebSocket.
    websockets: Vec<(String, bool, Arc<WebSocketRoute>)>,
    /// Proxies whose `Forwarded` / `X-Forwarded-For` headers are believed.
    forwarders: Vec<ipnet::IpNet>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let routes: Vec<String> = self
            .routes
            .iter()
            .map(|route| format!("{} {} ({:?})", route.method, route.path, route.runs))
            .collect();
        f.debug_struct("Router").field("routes", &routes).finish()
    }
}

/// A route found for a request.
#[derive(Clone)]
pub struct Found {
    /// How the handler runs.
    pub runs: Runs,
    /// The handler.
    pub handler: Handler,
}

impl Router {
    /// A router with no routes (every request gets 404).
    pub fn new() -> Router {
        Router::default()
    }

    /// Believes the `Forwarded` and `X-Forwarded-For` headers of requests whose peer is in
    /// `ranges` (the HTTP proxies in front of this server, nginx say), for
    /// [`Request::client_ip`]. Nobody else's are: a client can write any header.
    pub fn trust_forwarded_from(
        mut self,
        ranges: impl IntoIterator<Item = ipnet::IpNet>,
    ) -> Router {
        self.forwarders = ranges.into_iter().collect();
        self
    }

    /// The proxies trusted for forwarding headers.
    pub(crate) fn forwarders(&self) -> &[ipnet::IpNet] {
        &self.forwarders
    }

    /// Routes `GET` (and `HEAD`) requests for `path` to `handler`, on the event loop.
    pub fn get(
        self,
        path: &str,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> Router {
        self.route("GET", path, handler)
    }

    /// Routes `POST` requests for `path` to `handler`, on the event loop.
    pub fn post(
        self,
        path: &str,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> Router {
        self.route("POST", path, handler)
    }

    /// Routes `method` requests for `path` to `handler`, on the event loop. A `path` ending in
    /// `*` matches every path that starts with what comes before the `*`.
    pub fn route(
        self,
        method: &str,
        path: &str,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> Router {
        self.add(method, path, Runs::Inline, Arc::new(handler))
    }

    /// Like [`Router::route`], with the handler run on the worker pool.
    pub fn route_offloaded(
        self,
        method: &str,
        path: &str,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> Router {
        self.add(method, path, Runs::Offloaded, Arc::new(handler))
    }

    fn add(mut self, method: &str, path: &str, runs: Runs, handler: Handler) -> Router {
        let (path, prefix) = match path.strip_suffix('*') {
            Some(prefix) => (prefix.to_string(), true),
            None => (path.to_string(), false),
        };
        self.routes.push(Arc::new(Route {
            method: method.to_ascii_uppercase(),
            path,
            prefix,
            runs,
            handler,
        }));
        self
    }

    /// Upgrades requests for `path` (exact, or a prefix ending in `*`) to WebSocket with
    /// `route`. A plain HTTP route on the same path still answers requests that do not ask to
    /// upgrade; a `GET` without an upgrade to a path only WebSocket serves gets 426.
    pub fn websocket(mut self, path: &str, route: WebSocketRoute) -> Router {
        let (path, prefix) = match path.strip_suffix('*') {
            Some(prefix) => (prefix.to_string(), true),
            None => (path.to_string(), false),
        };
        self.websockets.push((path, prefix, Arc::new(route)));
        self
    }

    /// The WebSocket route for `path`, if any.
    pub fn find_websocket(&self, path: &str) -> Option<Arc<WebSocketRoute>> {
        self.websockets
            .iter()
            .find(|(route_path, prefix, _)| {
                if *prefix {
                    path.starts_with(route_path.as_str())
                } else {
                    path == route_path
                }
            })
            .map(|(_, _, route)| route.clone())
    }

    /// The route for `method` and `path`, if any.
    pub fn find(&self, method: &str, path: &str) -> Option<Found> {
        self.route_for(method, path).map(|(runs, handler)| Found {
            runs,
            handler: handler.clone(),
        })
    }

    /// How the handler for `method` and `path` runs, and the handler, borrowed: matching
    /// allocates nothing and touches no reference count.
    pub(crate) fn route_for(&self, method: &str, path: &str) -> Option<(Runs, &Handler)> {
        let method = if method == "HEAD" { "GET" } else { method };
        self.routes
            .iter()
            .find(|route| route.method == method && route.matches(path))
            .map(|route| (route.runs, &route.handler))
    }

    /// The methods some route serves for `path`, as an `Allow` header value (`HEAD` beside
    /// `GET`), or `None` if no route matches the path at all: what a 405 answer lists.
    ///
    /// ```
    /// use socketserver::protocol::http::{Response, Router};
    ///
    /// let router = Router::new()
    ///     .get("/item", |_| Response::new(200))
    ///     .post("/item", |_| Response::new(201));
    /// assert_eq!(router.allowed_methods("/item").as_deref(), Some("GET, HEAD, POST"));
    /// assert_eq!(router.allowed_methods("/other"), None);
    /// ```
    pub fn allowed_methods(&self, path: &str) -> Option<String> {
        let mut methods: Vec<&str> = Vec::new();
        if self.find_websocket(path).is_some() {
            methods.push("GET");
        }
        for route in self.routes.iter().filter(|route| route.matches(path)) {
            let implied = (route.method == "GET").then_some("HEAD");
            for method in std::iter::once(route.method.as_str()).chain(implied) {
                if !methods.contains(&method) {
                    methods.push(method);
                }
            }
        }
        (!methods.is_empty()).then(|| methods.join(", "))
    }
}
