//! What a request must show before any handler (or the authentication check) sees it:
//!
//! 1. **An allowed `Host`.** Anything else is answered `421 Misdirected Request`. This is what
//!    stops DNS rebinding: a page on `evil.test` whose name resolves to `127.0.0.1` reaches the
//!    dashboard with `Host: evil.test`, and is refused before it can read a page or its CSRF
//!    token.
//! 2. **An allowed `Origin`** on every state-changing request and on WebSocket upgrades (the
//!    shell). Browsers send `Origin` on both; a foreign one gets `403`. A request without
//!    `Origin` comes from a non-browser client and still needs the token below.
//! 3. **The CSRF token** on every state-changing request: the `x-csrf-token` header (HTMX sends
//!    it from the page's `hx-headers`) or a `csrf` form field (plain forms). Missing or stale:
//!    `403`, "reload the page".
//!
//! Allowed hosts are derived from `--web-listen` and `--web-public-url`
//! ([`AllowedHosts::new`]): the loopback names `localhost`, `127.0.0.0/8` and `[::1]` on any
//! port (a rebinding page cannot make a browser send them, and `kubectl port-forward` changes
//! the port), the listen address itself when it is a specific address, and the host of each
//! public URL. The decision is [`AllowedHosts::check`], a pure function tested without a
//! server; [`guard`] is the middleware around it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::RngCore;

/// The request header that carries the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The form field that carries the CSRF token (forms posted without JavaScript).
pub const CSRF_FIELD: &str = "csrf";
/// The largest form body the CSRF check reads to find [`CSRF_FIELD`].
const MAX_FORM_BYTES: usize = 64 << 10;

/// A `--web-public-url` that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublicUrlError {
    /// Not `http://host[:port]` or `https://host[:port]`.
    #[error(
        "--web-public-url {url:?}: {reason}; give the URL people open the dashboard at, e.g. https://fleet.example.com or http://10.0.0.5:18080"
    )]
    Invalid {
        /// The value given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A host and optional port, as in a `Host` header or the authority of an origin. Host names
/// are lower-cased without a trailing dot; IPv6 addresses keep their brackets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authority {
    host: String,
    port: Option<u16>,
}

impl Authority {
    /// Parses `host`, `host:port`, `[v6]` or `[v6]:port`; `None` when malformed.
    pub fn parse(raw: &str) -> Option<Self> {
        let raw = raw.trim();
        let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
            let (v6, after) = rest.split_once(']')?;
            v6.parse::<std::net::Ipv6Addr>().ok()?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':')?.parse().ok()?),
            };
            (format!("[{}]", v6.to_ascii_lowercase()), port)
        } else {
            let (host, port) = match raw.rsplit_once(':') {
                Some((h, p)) => (h, Some(p.parse().ok()?)),
                None => (raw, None),
            };
            let ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_';
            if host.is_empty() || !host.chars().all(ok) {
                return None;
            }
            (host.trim_end_matches('.').to_ascii_lowercase(), port)
        };
        Some(Self { host, port })
    }

    fn with_default_port(mut self, port: u16) -> Self {
        self.port.get_or_insert(port);
        self
    }

    fn is_loopback(&self) -> bool {
        if self.host == "localhost" {
            return true;
        }
        let bare = self.host.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

impl std::fmt::Display for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

/// `scheme://authority` of an origin or URL; `None` when it is not http(s) or malformed.
/// The port is made explicit (80/443) so that equal origins compare equal.
fn parse_origin(raw: &str) -> Option<(&str, Authority)> {
    let (scheme, rest) = raw.trim().split_once("://")?;
    let default = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.contains('@') {
        return None;
    }
    let scheme = if default == 80 { "http" } else { "https" };
    Some((
        scheme,
        Authority::parse(authority)?.with_default_port(default),
    ))
}

/// Why a request was refused at the boundary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No `Host` header (nor an authority in the request line).
    MissingHost,
    /// A `Host` this dashboard is not served at.
    ForeignHost(String),
    /// An `Origin` other than the dashboard's own.
    ForeignOrigin(String),
    /// A state-changing request without the CSRF token, or with a stale one.
    BadCsrfToken,
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::MissingHost | Refusal::ForeignHost(_) => StatusCode::MISDIRECTED_REQUEST,
            Refusal::ForeignOrigin(_) | Refusal::BadCsrfToken => StatusCode::FORBIDDEN,
        }
    }

    fn message(&self, hosts: &AllowedHosts) -> String {
        match self {
            Refusal::MissingHost => "the request has no Host header".to_owned(),
            Refusal::ForeignHost(host) => format!(
                "this dashboard is not served at host {host:?}: open it at {}, or start the operator with --web-public-url set to the URL you use",
                hosts.example_url()
            ),
            Refusal::ForeignOrigin(origin) => format!(
                "requests from origin {origin:?} are refused: only pages of this dashboard may change state or open a shell"
            ),
            Refusal::BadCsrfToken => {
                "the request lacks a current CSRF token: reload the page and try again".to_owned()
            }
        }
    }
}

/// The `Host` values the dashboard answers, and the origins whose pages may change state.
#[derive(Clone, Debug)]
pub struct AllowedHosts {
    /// The listen address, when it is a specific address (not `0.0.0.0` / `[::]`).
    listen: Option<Authority>,
    /// The listen port (for messages).
    listen_port: u16,
    /// `(scheme, authority)` of each public URL.
    public: Vec<(&'static str, Authority)>,
}

impl AllowedHosts {
    /// The allow-list for a dashboard listening on `listen` and reached at `public_urls`.
    pub fn new(listen: SocketAddr, public_urls: &[String]) -> Result<Self, PublicUrlError> {
        let mut public = Vec::new();
        for url in public_urls
            .iter()
            .map(|u| u.trim())
            .filter(|u| !u.is_empty())
        {
            let invalid = |reason| PublicUrlError::Invalid {
                url: url.to_owned(),
                reason,
            };
            let (scheme, authority) =
                parse_origin(url).ok_or_else(|| invalid("not an http(s) URL with a host"))?;
            let path = url
                .split_once("://")
                .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
                .unwrap_or("/");
            if path != "/" {
                return Err(invalid(
                    "the dashboard is served at the root of its origin, not under a path",
                ));
            }
            public.push((if scheme == "http" { "http" } else { "https" }, authority));
        }
        let ip = listen.ip();
        let listen_authority = (!ip.is_unspecified()).then(|| Authority {
            host: match ip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            },
            port: Some(listen.port()),
        });
        Ok(Self {
            listen: listen_authority,
            listen_port: listen.port(),
            public,
        })
    }

    fn example_url(&self) -> String {
        match (self.public.first(), &self.listen) {
            (Some((scheme, authority)), _) => format!("{scheme}://{authority}/"),
            (None, Some(listen)) if !listen.is_loopback() => format!("http://{listen}/"),
            _ => format!("http://127.0.0.1:{}/", self.listen_port),
        }
    }

    fn host_allowed(&self, host: &Authority) -> bool {
        if host.is_loopback() {
            return true;
        }
        let http = host.clone().with_default_port(80);
        let https = host.clone().with_default_port(443);
        let listen = self.listen.as_ref().is_some_and(|l| *l == http);
        listen
            || self.public.iter().any(|(scheme, a)| match *scheme {
                "http" => *a == http,
                _ => *a == https,
            })
    }

    /// The decision for one request: its `Host` value, its `Origin` value, and whether it
    /// changes state or upgrades to a WebSocket (only then is the origin checked).
    pub fn check(
        &self,
        host: Option<&str>,
        origin: Option<&str>,
        origin_matters: bool,
    ) -> Result<(), Refusal> {
        let host_raw = host.ok_or(Refusal::MissingHost)?;
        let host = Authority::parse(host_raw)
            .filter(|h| self.host_allowed(h))
            .ok_or_else(|| Refusal::ForeignHost(host_raw.to_owned()))?;
        let Some(origin_raw) = origin.filter(|_| origin_matters) else {
            return Ok(());
        };
        let foreign = || Refusal::ForeignOrigin(origin_raw.to_owned());
        let (scheme, origin) = parse_origin(origin_raw).ok_or_else(foreign)?;
        // Same host and port as the request; the scheme is not compared (a TLS-terminating
        // proxy in front serves https while this server sees http).
        let default = if scheme == "http" { 80 } else { 443 };
        let same_origin = origin == host.clone().with_default_port(default);
        let public = self
            .public
            .iter()
            .any(|(s, a)| *s == scheme && *a == origin);
        if same_origin || public {
            Ok(())
        } else {
            Err(foreign())
        }
    }
}

/// The CSRF token of this dashboard process: 32 random bytes, hex. Pages carry it; every
/// state-changing request must send it back. A cross-site page cannot read it (same-origin
/// policy, and the Host check stops rebinding), so it cannot forge a request that carries it.
#[derive(Clone)]
pub struct CsrfToken(Arc<str>);

impl CsrfToken {
    /// A fresh random token.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self(hex::encode(bytes).into())
    }

    /// A given token, e.g. one shared by every replica behind one Service (read from a
    /// Secret), so a page served by one replica can post to another.
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into().into())
    }

    /// The token, to embed in pages.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn matches(&self, candidate: &str) -> bool {
        super::auth::constant_time_eq(candidate.trim(), &self.0)
    }
}

impl std::fmt::Debug for CsrfToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CsrfToken(..)")
    }
}

/// The boundary's configuration: allowed hosts and origins, and the CSRF token.
#[derive(Clone, Debug)]
pub struct Boundary {
    /// Allowed `Host` and `Origin` values.
    pub hosts: AllowedHosts,
    /// This process's CSRF token.
    pub csrf: CsrfToken,
}

impl Boundary {
    /// The boundary of a dashboard on `listen` reached at `public_urls`, with a new token.
    pub fn new(listen: SocketAddr, public_urls: &[String]) -> Result<Self, PublicUrlError> {
        Ok(Self {
            hosts: AllowedHosts::new(listen, public_urls)?,
            csrf: CsrfToken::generate(),
        })
    }
}

fn header_str(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    header_str(headers, header::UPGRADE).is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn refuse(boundary: &Boundary, request: &Request, refusal: &Refusal) -> Response {
    let headers = request.headers();
    tracing::warn!(
        method = %request.method(),
        path = request.uri().path(),
        host = header_str(headers, header::HOST).unwrap_or(""),
        origin = header_str(headers, header::ORIGIN).unwrap_or(""),
        refusal = ?refusal,
        "dashboard request refused at the boundary"
    );
    (refusal.status(), refusal.message(&boundary.hosts)).into_response()
}

/// The CSRF token a request carries: the header, or the `csrf` field of a form body (which is
/// read and put back for the handler).
async fn carried_token(request: Request) -> Result<(Option<String>, Request), Refusal> {
    if let Some(token) = header_str(request.headers(), CSRF_HEADER) {
        return Ok((Some(token.to_owned()), request));
    }
    let is_form = header_str(request.headers(), header::CONTENT_TYPE)
        .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Ok((None, request));
    }
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| Refusal::BadCsrfToken)?;
    let token = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&bytes)
        .ok()
        .and_then(|fields| fields.into_iter().find(|(k, _)| k == CSRF_FIELD))
        .map(|(_, v)| v);
    Ok((token, Request::from_parts(parts, Body::from(bytes))))
}

/// Middleware: the Host, Origin and CSRF checks of this module, in that order.
pub async fn guard(State(boundary): State<Boundary>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    // HTTP/2 carries the host in the request line's authority, not in a Host header.
    let host = header_str(headers, header::HOST)
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.to_string()));
    let state_changing = changes_state(request.method());
    let origin_matters = state_changing || is_upgrade(headers);
    // Browsers say outright when a request comes from another site.
    let cross_site = header_str(headers, "sec-fetch-site").is_some_and(|v| v == "cross-site");
    if origin_matters && cross_site {
        let origin = header_str(headers, header::ORIGIN).unwrap_or("(another site)");
        return refuse(
            &boundary,
            &request,
            &Refusal::ForeignOrigin(origin.to_owned()),
        );
    }
    if let Err(refusal) = boundary.hosts.check(
        host.as_deref(),
        header_str(headers, header::ORIGIN),
        origin_matters,
    ) {
        return refuse(&boundary, &request, &refusal);
    }
    if !state_changing {
        return next.run(request).await;
    }
    let path = request.uri().path().to_owned();
    match carried_token(request).await {
        Ok((Some(token), request)) if boundary.csrf.matches(&token) => next.run(request).await,
        Ok((_, request)) => refuse(&boundary, &request, &Refusal::BadCsrfToken),
        Err(refusal) => {
            tracing::warn!(path, refusal = ?refusal, "dashboard request refused at the boundary");
            (refusal.status(), refusal.message(&boundary.hosts)).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(listen: &str, public: &[&str]) -> AllowedHosts {
        let public: Vec<String> = public.iter().map(|s| (*s).to_owned()).collect();
        AllowedHosts::new(listen.parse().expect("addr"), &public).expect("allow-list")
    }

    #[test]
    fn loopback_names_are_allowed_on_any_port() {
        let h = hosts("127.0.0.1:18080", &[]);
        for host in [
            "127.0.0.1:18080",
            "localhost:18080",
            "LOCALHOST:9999",
            "127.0.0.2:1",
            "[::1]:18080",
            "localhost",
        ] {
            assert_eq!(h.check(Some(host), None, false), Ok(()), "{host}");
        }
    }

    #[test]
    fn foreign_hosts_are_refused_even_on_the_right_port() {
        let h = hosts("127.0.0.1:18080", &[]);
        for host in [
            "evil.test:18080",
            "evil.test",
            "localhost.evil.test:18080",
            "127.0.0.1.nip.io:18080",
            "10.0.0.5:18080",
            "",
            "a b",
            "host:notaport",
        ] {
            assert_eq!(
                h.check(Some(host), None, false),
                Err(Refusal::ForeignHost(host.to_owned())),
                "{host}"
            );
        }
        assert_eq!(h.check(None, None, false), Err(Refusal::MissingHost));
    }

    #[test]
    fn a_specific_listen_address_and_public_urls_are_allowed() {
        let h = hosts("10.0.0.5:18080", &["https://fleet.example.com"]);
        assert_eq!(h.check(Some("10.0.0.5:18080"), None, false), Ok(()));
        assert!(h.check(Some("10.0.0.5:18081"), None, false).is_err());
        assert_eq!(h.check(Some("fleet.example.com"), None, false), Ok(()));
        assert_eq!(h.check(Some("fleet.example.com:443"), None, false), Ok(()));
        assert_eq!(h.check(Some("Fleet.Example.Com."), None, false), Ok(()));
        assert!(
            h.check(Some("fleet.example.com:8443"), None, false)
                .is_err()
        );
        // An unspecified listen address adds no host of its own.
        let any = hosts("0.0.0.0:18080", &[]);
        assert!(any.check(Some("0.0.0.0:18080"), None, false).is_err());
        assert!(any.check(Some("10.0.0.5:18080"), None, false).is_err());
        assert_eq!(any.check(Some("localhost:8080"), None, false), Ok(()));
    }

    #[test]
    fn origin_must_be_the_page_itself_or_a_public_url() {
        let h = hosts("127.0.0.1:18080", &["https://fleet.example.com"]);
        let host = Some("127.0.0.1:18080");
        assert_eq!(h.check(host, Some("http://127.0.0.1:18080"), true), Ok(()));
        assert_eq!(h.check(host, None, true), Ok(()), "non-browser client");
        for origin in [
            "http://evil.test",
            "http://evil.test:18080",
            "http://localhost:18080", // another name of the same server is another origin
            "http://127.0.0.1:3000",  // another local web app
            "null",
            "file://",
            "http://127.0.0.1:18080@evil.test",
        ] {
            assert_eq!(
                h.check(host, Some(origin), true),
                Err(Refusal::ForeignOrigin(origin.to_owned())),
                "{origin}"
            );
        }
        // The scheme is not compared: behind a TLS-terminating proxy the page is https while
        // the dashboard sees plain http, and no other page can have this host and port.
        assert_eq!(h.check(host, Some("https://127.0.0.1:18080"), true), Ok(()));
        // Only state-changing requests and upgrades look at the origin.
        assert_eq!(h.check(host, Some("http://evil.test"), false), Ok(()));
        // Behind a proxy that keeps the public Host.
        assert_eq!(
            h.check(
                Some("fleet.example.com"),
                Some("https://fleet.example.com"),
                true
            ),
            Ok(())
        );
        assert_eq!(
            h.check(
                Some("fleet.example.com"),
                Some("https://fleet.example.com:443"),
                true
            ),
            Ok(())
        );
    }

    #[test]
    fn public_urls_must_be_http_origins() {
        let bad = |url: &str| {
            AllowedHosts::new("127.0.0.1:1".parse().expect("addr"), &[url.to_owned()])
                .expect_err(url)
                .to_string()
        };
        assert!(bad("fleet.example.com").contains("--web-public-url"));
        assert!(bad("ftp://fleet.example.com").contains("http(s)"));
        assert!(bad("https://fleet.example.com/dashboard").contains("root"));
        assert!(bad("https://user@fleet.example.com").contains("http(s)"));
        assert!(
            AllowedHosts::new(
                "127.0.0.1:1".parse().expect("addr"),
                &["https://fleet.example.com/".to_owned(), " ".to_owned()]
            )
            .is_ok()
        );
    }

    #[test]
    fn foreign_host_message_says_where_the_dashboard_is() {
        let h = hosts("127.0.0.1:18080", &[]);
        let message = Refusal::ForeignHost("evil.test".into()).message(&h);
        assert!(message.contains("http://127.0.0.1:18080/"), "{message}");
        assert!(message.contains("--web-public-url"), "{message}");
    }

    #[test]
    fn csrf_tokens_are_random_and_compared_exactly() {
        let a = CsrfToken::generate();
        let b = CsrfToken::generate();
        assert_eq!(a.as_str().len(), 64);
        assert_ne!(a.as_str(), b.as_str());
        assert!(a.matches(a.as_str()));
        assert!(!a.matches(b.as_str()));
        assert!(!a.matches(""));
        assert!(!format!("{a:?}").contains(a.as_str()));
    }
}
