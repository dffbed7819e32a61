//! Who may use the dashboard, and the headers every response carries.
//!
//! Configured by environment (see `serve-web --help`):
//! - `FLEET_WEB_TOKEN`: a bearer token. API clients and proxies send
//!   `Authorization: Bearer <token>`; people paste it once on `/login`, which opens a session
//!   ([`super::sessions`]: an expiring random id in an `HttpOnly`, `SameSite=Strict` cookie,
//!   `Secure` unless served over plain http on loopback; sign-ins are rate-limited).
//! - `FLEET_WEB_BASIC_AUTH=user:password`: HTTP basic auth (the browser asks).
//! - Neither: open, which is allowed only on a loopback address or with
//!   `--allow-unauthenticated` (the dashboard sits behind an authenticating proxy, such as an
//!   OIDC proxy, that is the only way in).
//!
//! Cookies and basic-auth credentials travel with cross-site requests, so authentication alone
//! does not stop a foreign page: [`super::boundary`] checks Host, Origin and the CSRF token
//! before this module runs.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use axum::Form;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Extensions, HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use maud::{DOCTYPE, html};
use serde::Deserialize;

use super::sessions::{SESSION_COOKIE, Sessions};

/// Who a request comes from, as the audit trail names them: `local` when the dashboard is
/// open, `token` for the bearer token and its sessions, the user name with basic auth. Put
/// in the request's extensions by [`guard`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal(pub String);

impl Principal {
    /// The principal [`guard`] put in `extensions` (`local` if none: an unguarded router).
    pub fn of(extensions: &Extensions) -> String {
        extensions
            .get::<Principal>()
            .map_or_else(|| "local".to_owned(), |p| p.0.clone())
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The production Content-Security-Policy: scripts only from this origin (no inline script,
/// no eval). Inline styles stay allowed because xterm.js sizes its rows with them.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; \
    form-action 'self'";

/// How requests are authenticated.
#[derive(Clone, Default)]
pub enum Auth {
    /// Everyone (loopback, or behind an authenticating proxy).
    #[default]
    Open,
    /// A bearer token (header or cookie).
    Token(String),
    /// HTTP basic auth.
    Basic {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::Open => "Open",
            Auth::Token(_) => "Token(..)",
            Auth::Basic { .. } => "Basic(..)",
        })
    }
}

/// The access configuration is unsafe or malformed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Both a token and basic auth were given.
    #[error("set either FLEET_WEB_TOKEN or FLEET_WEB_BASIC_AUTH, not both")]
    Both,
    /// `FLEET_WEB_BASIC_AUTH` is not `user:password`.
    #[error("FLEET_WEB_BASIC_AUTH must be `user:password` with a non-empty user and password")]
    BadBasic,
    /// An empty token.
    #[error("FLEET_WEB_TOKEN is empty: set a long random token, e.g. `openssl rand -hex 32`")]
    EmptyToken,
    /// Open on a non-loopback address.
    #[error(
        "the dashboard would listen on {addr} without authentication: set FLEET_WEB_TOKEN or FLEET_WEB_BASIC_AUTH=user:password, listen on 127.0.0.1, or pass --allow-unauthenticated when an authenticating (OIDC) proxy is the only way in"
    )]
    OpenBeyondLoopback {
        /// The listen address.
        addr: SocketAddr,
    },
}

impl Auth {
    /// Builds the configuration from the environment values and checks it is safe for
    /// `addr`.
    pub fn from_settings(
        token: Option<String>,
        basic: Option<String>,
        allow_unauthenticated: bool,
        addr: SocketAddr,
    ) -> Result<Self, AuthError> {
        let auth = match (token, basic) {
            (Some(_), Some(_)) => return Err(AuthError::Both),
            (Some(t), None) if t.trim().is_empty() => return Err(AuthError::EmptyToken),
            (Some(t), None) => Auth::Token(t.trim().to_owned()),
            (None, Some(b)) => match b.split_once(':') {
                Some((u, p)) if !u.is_empty() && !p.is_empty() => Auth::Basic {
                    user: u.to_owned(),
                    password: p.to_owned(),
                },
                _ => return Err(AuthError::BadBasic),
            },
            (None, None) => Auth::Open,
        };
        if matches!(auth, Auth::Open) && !addr.ip().is_loopback() && !allow_unauthenticated {
            return Err(AuthError::OpenBeyondLoopback { addr });
        }
        Ok(auth)
    }

    /// Who `headers` authenticate, if anyone.
    fn admits(&self, headers: &HeaderMap, sessions: &Sessions) -> Option<Principal> {
        let who = |w: &str| Some(Principal(w.to_owned()));
        match self {
            Auth::Open => who("local"),
            Auth::Token(token) => {
                let bearer = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "));
                if bearer.is_some_and(|t| constant_time_eq(t, token)) {
                    return who("token");
                }
                let session = cookie(headers, SESSION_COOKIE)?;
                sessions.who(&session, Instant::now()).map(Principal)
            }
            Auth::Basic { user, password } => {
                let ok = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Basic "))
                    .and_then(|b64| {
                        base64::engine::general_purpose::STANDARD
                            .decode(b64.trim())
                            .ok()
                    })
                    .and_then(|raw| String::from_utf8(raw).ok())
                    .is_some_and(|pair| {
                        pair.split_once(':').is_some_and(|(u, p)| {
                            constant_time_eq(u, user) & constant_time_eq(p, password)
                        })
                    });
                if ok { who(user) } else { None }
            }
        }
    }
}

/// Compares without an early exit on the first differing byte.
pub(crate) fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// Middleware: authentication. An admitted request carries its [`Principal`].
pub async fn guard(
    State(state): State<super::WebState>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let public = path.starts_with("/assets/") || path == "/login" || path == "/favicon.ico";
    if let Some(who) = state.auth.admits(request.headers(), &state.sessions) {
        request.extensions_mut().insert(who);
        return next.run(request).await;
    }
    if public {
        return next.run(request).await;
    }
    match state.auth {
        Auth::Basic { .. } => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"harmony fleet\"")],
            "authentication required",
        )
            .into_response(),
        _ if request.method() == Method::GET && !crate::web::layout::is_htmx(request.headers()) => {
            Redirect::to("/login").into_response()
        }
        _ => (StatusCode::UNAUTHORIZED, "authentication required").into_response(),
    }
}

/// Middleware: CSP and friends on every response.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// `GET /login`: the token form.
pub async fn login_page(State(state): State<super::WebState>) -> Response {
    let body = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Sign in · harmony fleet" }
                link rel="stylesheet" href={ "/assets/app.css?v=" (super::assets::ASSETS_VERSION) };
            }
            body class="flex min-h-screen items-center justify-center bg-slate-50" {
                main class="w-full max-w-sm rounded-lg border border-slate-200 bg-white p-6" {
                    h1 class="mb-4 text-xl font-semibold" { "harmony fleet" }
                    form method="post" action="/login" class="flex flex-col gap-3" {
                        (super::layout::csrf_field(&state))
                        label for="token" class="text-sm font-medium" { "Access token" }
                        input id="token" name="token" type="password" required autocomplete="current-password"
                            class="rounded border border-slate-300 px-2 py-1";
                        button type="submit" class="rounded bg-slate-900 px-3 py-1.5 text-white" { "Sign in" }
                    }
                }
            }
        }
    };
    body.into_response()
}

/// Form of `POST /login`.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    /// The token.
    pub token: String,
}

/// The client's address, when the server records it (`serve` does; handler tests do not).
fn client(extensions: &Extensions) -> Option<IpAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

/// Whether the browser reached this dashboard over plain http on a loopback name: the only
/// case where the session cookie goes without `Secure` (browsers would drop it otherwise).
fn plain_http_on_loopback(headers: &HeaderMap) -> bool {
    let https = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let loopback = name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    !https && loopback
}

/// `POST /login`: opens a session when the token is right. Failed attempts are limited per
/// client address (429 with `Retry-After` beyond the limit).
pub async fn login(
    State(state): State<super::WebState>,
    headers: HeaderMap,
    extensions: Extensions,
    Form(form): Form<LoginForm>,
) -> Response {
    let (client, now) = (client(&extensions), Instant::now());
    if let Err(wait) = state.sessions.may_try(client, now) {
        let secs = wait.as_secs().max(1);
        tracing::warn!(client = ?client, retry_after_secs = secs, "dashboard sign-in refused: too many failed attempts");
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, secs.to_string())],
            format!("too many failed sign-ins from this address: try again in {secs} s"),
        )
            .into_response();
    }
    let ok = match &state.auth {
        Auth::Token(token) => constant_time_eq(form.token.trim(), token),
        _ => false,
    };
    if !ok {
        state.sessions.failed(client, now);
        tracing::warn!(client = ?client, "dashboard sign-in with a wrong token");
        return (StatusCode::UNAUTHORIZED, Body::from("wrong token")).into_response();
    }
    state.sessions.succeeded(client);
    let id = state.sessions.open("token", now);
    tracing::info!(client = ?client, who = "token", "dashboard session opened");
    let cookie = format!(
        "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        state.sessions.lifetime().as_secs(),
        if plain_http_on_loopback(&headers) {
            ""
        } else {
            "; Secure"
        }
    );
    let mut response = Redirect::to("/").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `POST /logout`: closes the session and clears its cookie.
pub async fn logout(State(state): State<super::WebState>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        state.sessions.close(&id);
    }
    let mut response = Redirect::to("/login").into_response();
    let clear = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(value) = HeaderValue::from_str(&clear) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn open_dashboard_is_refused_beyond_loopback() {
        let err = Auth::from_settings(None, None, false, addr("0.0.0.0:8080")).unwrap_err();
        assert!(err.to_string().contains("FLEET_WEB_TOKEN"), "{err}");
        assert!(Auth::from_settings(None, None, false, addr("127.0.0.1:8080")).is_ok());
        assert!(Auth::from_settings(None, None, true, addr("0.0.0.0:8080")).is_ok());
    }

    #[test]
    fn basic_auth_needs_user_and_password() {
        let any = addr("0.0.0.0:1");
        assert!(Auth::from_settings(None, Some("admin".into()), false, any).is_err());
        assert!(Auth::from_settings(None, Some("a:b".into()), false, any).is_ok());
        assert!(Auth::from_settings(Some("t".into()), Some("a:b".into()), false, any).is_err());
    }

    #[test]
    fn the_cookie_goes_without_secure_only_over_plain_http_on_loopback() {
        let headers = |host: &str, proto: Option<&str>| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, host.parse().unwrap());
            if let Some(p) = proto {
                h.insert("x-forwarded-proto", p.parse().unwrap());
            }
            h
        };
        assert!(plain_http_on_loopback(&headers("127.0.0.1:8080", None)));
        assert!(plain_http_on_loopback(&headers("localhost:8080", None)));
        assert!(plain_http_on_loopback(&headers("[::1]:8080", None)));
        assert!(!plain_http_on_loopback(&headers(
            "localhost:8080",
            Some("https")
        )));
        assert!(!plain_http_on_loopback(&headers("fleet.example.com", None)));
        assert!(!plain_http_on_loopback(&headers("10.0.0.5:8080", None)));
    }

    #[test]
    fn comparison_is_exact() {
        assert!(constant_time_eq("secret", "secret"));
        assert!(!constant_time_eq("secret", "secret2"));
        assert!(!constant_time_eq("", "x"));
    }
}
