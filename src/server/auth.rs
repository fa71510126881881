//! Who may call what: the API key (every route but the probes, `/metrics` and the UI optionally public), the Host
//! allow-list (against DNS rebinding) and the Origin check on state-changing requests (against cross-site form
//! posts). [`ROUTES`] lists every route with its access rule.

use super::error::ApiError;
use crate::config::ServerConfig;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Who may call a route when an API key is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Always open (the probes).
    Public,
    /// Open when `server.public_metrics`.
    Metrics,
    /// Open when `server.public_ui` (the page, `/docs`, `/openapi.json`).
    Ui,
    /// Needs the key.
    Key,
}

/// A route of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// HTTP method.
    pub method: &'static str,
    /// Path, with `{param}` placeholders.
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
}

const fn route(method: &'static str, path: &'static str, access: Access) -> Route {
    Route {
        method,
        path,
        access,
    }
}

/// Every route the router serves (tests check each non-public one needs the key).
pub const ROUTES: &[Route] = &[
    route("POST", "/v1/documents", Access::Key),
    route("GET", "/v1/documents", Access::Key),
    route("GET", "/v1/documents/{id}", Access::Key),
    route("DELETE", "/v1/documents/{id}", Access::Key),
    route("GET", "/v1/jobs/{id}", Access::Key),
    route("POST", "/v1/retrieve", Access::Key),
    route("POST", "/v1/qa", Access::Key),
    route("POST", "/v1/embeddings", Access::Key),
    route("POST", "/v1/chat/completions", Access::Key),
    route("POST", "/v1/completions", Access::Key),
    route("GET", "/v1/models", Access::Key),
    route("GET", "/healthz", Access::Public),
    route("GET", "/readyz", Access::Public),
    route("GET", "/metrics", Access::Metrics),
    route("GET", "/", Access::Ui),
    route("GET", "/docs/", Access::Ui),
    route("GET", "/openapi.json", Access::Ui),
];

/// The access rule of a request path (any path not listed, an unknown route included, needs the key).
pub fn access_of(path: &str) -> Access {
    match path {
        "/healthz" | "/readyz" => Access::Public,
        "/metrics" => Access::Metrics,
        "/" | "/openapi.json" | "/docs" => Access::Ui,
        p if p.starts_with("/docs/") => Access::Ui,
        _ => Access::Key,
    }
}

/// The request guard's settings, fixed at start-up.
#[derive(Debug)]
pub struct Guard {
    /// SHA-256 of the key (compared in constant time, so neither content nor length leaks).
    key_digest: Option<[u8; 32]>,
    public_metrics: bool,
    public_ui: bool,
    /// Lower-case host names, with or without port; `*` allows any.
    allowed_hosts: Vec<String>,
    cors_origins: Vec<String>,
}

impl Guard {
    /// The guard `server` asks for; with no `allowed_hosts`, the loopback names and the bind address's host.
    pub fn new(server: &ServerConfig) -> Arc<Self> {
        let mut allowed_hosts: Vec<String> = server
            .allowed_hosts
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .collect();
        if allowed_hosts.is_empty() {
            allowed_hosts = ["localhost", "127.0.0.1", "[::1]"]
                .map(String::from)
                .to_vec();
            if let Ok(addr) = server.bind.parse::<std::net::SocketAddr>() {
                allowed_hosts.push(match addr.ip() {
                    std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                    ip => ip.to_string(),
                });
            }
        }
        Arc::new(Self {
            key_digest: server.api_key.as_deref().map(digest),
            public_metrics: server.public_metrics,
            public_ui: server.public_ui,
            allowed_hosts,
            cors_origins: server.cors_origins.clone(),
        })
    }

    /// Whether `host` (a Host header value, `name[:port]`) is allowed.
    fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let name = host_name(&host);
        self.allowed_hosts
            .iter()
            .any(|a| a == "*" || *a == host || a == name)
    }

    /// Whether a browser request from `origin` may change state on a server reached as `host` (when known).
    fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        if self
            .cors_origins
            .iter()
            .any(|o| o.eq_ignore_ascii_case(origin))
        {
            return true;
        }
        let Some(authority) = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
        else {
            return false; // `null`, `file://`, ...
        };
        match host {
            Some(host) => authority.eq_ignore_ascii_case(host.trim()),
            None => self.host_allowed(authority),
        }
    }

    /// Whether a request for `path` needs the key.
    fn needs_key(&self, path: &str) -> bool {
        match access_of(path) {
            Access::Public => false,
            Access::Metrics => !self.public_metrics,
            Access::Ui => !self.public_ui,
            Access::Key => true,
        }
    }

    /// Checks the request's key, if the server has one and the path needs it.
    fn check_key(&self, path: &str, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(expected) = &self.key_digest else {
            return Ok(());
        };
        if !self.needs_key(path) {
            return Ok(());
        }
        match presented_key(headers) {
            Some(k) if bool::from(digest(k)[..].ct_eq(&expected[..])) => Ok(()),
            Some(_) => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                "the API key is not valid",
            )),
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this endpoint needs an API key: send `Authorization: Bearer KEY` (or `X-API-Key: KEY`)",
            )),
        }
    }
}

fn digest(key: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&Sha256::digest(key.as_bytes()));
    out
}

/// `name` of `name:port`, `[v6]` of `[v6]:port`.
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// The key a request carries: `Authorization: <scheme> KEY` with the scheme `Bearer` in any case, or
/// `X-API-Key: KEY`.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(char::is_whitespace)?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim())
        });
    bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
}

/// Whether a method changes state (and so is refused to foreign origins).
fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The guard middleware: 403 `host_not_allowed` for a Host outside the allow-list (the probes excepted), 403
/// `origin_not_allowed` for a state-changing request from a foreign Origin, 401 without a valid key where one is
/// needed.
pub async fn guard(
    State(guard): State<Arc<Guard>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let path = req.uri().path();
    let headers = req.headers();
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if access_of(path) != Access::Public {
        if let Some(host) = host {
            if !guard.host_allowed(host) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "host_not_allowed",
                    format!("host '{host}' is not served here; add it to server.allowed_hosts"),
                ));
            }
        }
    }
    if changes_state(req.method()) {
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("null");
            if !guard.origin_allowed(origin, host) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "origin_not_allowed",
                    format!(
                        "requests from origin '{origin}' may not change state here; add it to server.cors_origins"
                    ),
                ));
            }
        }
    }
    guard.check_key(path, headers)?;
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard_for(tweak: impl FnOnce(&mut ServerConfig)) -> Arc<Guard> {
        let mut c = ServerConfig::default();
        tweak(&mut c);
        Guard::new(&c)
    }

    #[test]
    fn hosts_default_to_loopback_and_bind_address() {
        let g = guard_for(|c| c.bind = "10.0.0.5:9000".into());
        for ok in [
            "localhost",
            "localhost:9000",
            "127.0.0.1:9000",
            "[::1]:9000",
            "10.0.0.5:9000",
        ] {
            assert!(g.host_allowed(ok), "{ok}");
        }
        for bad in ["evil.example", "evil.example:9000", "10.0.0.6"] {
            assert!(!g.host_allowed(bad), "{bad}");
        }
        let g = guard_for(|c| c.allowed_hosts = vec!["engram".into()]);
        assert!(g.host_allowed("engram:8080") && !g.host_allowed("localhost"));
        assert!(guard_for(|c| c.allowed_hosts = vec!["*".into()]).host_allowed("x"));
    }

    #[test]
    fn origins_must_match_the_host_or_the_cors_list() {
        let g = guard_for(|c| c.cors_origins = vec!["https://app.example".into()]);
        assert!(g.origin_allowed("http://localhost:8080", Some("localhost:8080")));
        assert!(!g.origin_allowed("http://evil.example", Some("localhost:8080")));
        assert!(!g.origin_allowed("null", Some("localhost:8080")));
        assert!(g.origin_allowed("https://app.example", Some("localhost:8080")));
        assert!(g.origin_allowed("http://127.0.0.1:1234", None));
        assert!(!g.origin_allowed("http://evil.example", None));
    }

    #[test]
    fn keys_are_read_with_any_scheme_case() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "bearer  k1 ".parse().unwrap());
        assert_eq!(presented_key(&h), Some("k1"));
        h.insert(header::AUTHORIZATION, "BEARER k2".parse().unwrap());
        assert_eq!(presented_key(&h), Some("k2"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(presented_key(&h), None);
        h.insert("x-api-key", "k3".parse().unwrap());
        assert_eq!(presented_key(&h), Some("k3"));
    }

    #[test]
    fn public_routes_follow_the_settings() {
        let g = guard_for(|c| c.public_metrics = true);
        assert!(!g.needs_key("/healthz") && !g.needs_key("/metrics"));
        assert!(g.needs_key("/") && g.needs_key("/docs/") && g.needs_key("/v1/models"));
        assert!(g.needs_key("/no/such/route"));
        let g = guard_for(|c| c.public_ui = true);
        assert!(g.needs_key("/metrics") && !g.needs_key("/") && !g.needs_key("/openapi.json"));
    }

    #[test]
    fn every_route_has_the_access_its_path_gets() {
        for r in ROUTES {
            assert_eq!(access_of(r.path), r.access, "{} {}", r.method, r.path);
        }
    }
}
