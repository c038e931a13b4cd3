//! A small router: method and path (exact, or a prefix ending in `*`) to a handler, which runs
//! on the event loop or, when marked, on the worker pool.

use std::sync::Arc;

use super::message::{Request, Response};

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

/// Routes requests to handlers; the first route that matches wins. A `HEAD` request is routed
/// as `GET` and answered without the body.
///
/// ```
/// use socketserver::protocol::http::{Response, Router};
///
/// let router = Router::new()
///     .get("/", |_| Response::text(200, "Hello, World!"))
///     .get("/static/*", |request| Response::text(200, format!("file {}", request.path)))
///     .route_offloaded("POST", "/hash", |request| {
///         Response::text(200, format!("{} bytes hashed", request.body.len()))
///     });
/// assert!(router.find("GET", "/static/a.css").is_some());
/// assert!(router.find("HEAD", "/").is_some());
/// assert!(router.find("GET", "/nowhere").is_none());
/// ```
#[derive(Default, Clone)]
pub struct Router {
    routes: Vec<Arc<Route>>,
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

    /// The route for `method` and `path`, if any.
    pub fn find(&self, method: &str, path: &str) -> Option<Found> {
        let method = if method == "HEAD" { "GET" } else { method };
        self.routes
            .iter()
            .find(|route| {
                route.method == method
                    && if route.prefix {
                        path.starts_with(route.path.as_str())
                    } else {
                        path == route.path
                    }
            })
            .map(|route| Found {
                runs: route.runs,
                handler: route.handler.clone(),
            })
    }
}
