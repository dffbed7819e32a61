//! Who may use the dashboard, and the headers every response carries.
//!
//! Configured by environment (see `serve-web --help`):
//! - `FLEET_WEB_TOKEN`: a bearer token. API clients and proxies send
//!   `Authorization: Bearer <token>`; people paste it once on `/login`, which stores it in an
//!   `HttpOnly`, `SameSite=Strict` cookie.
//! - `FLEET_WEB_BASIC_AUTH=user:password`: HTTP basic auth (the browser asks).
//! - Neither: open, which is allowed only on a loopback address or with
//!   `--allow-unauthenticated` (the dashboard sits behind an authenticating proxy, such as an
//!   OIDC proxy, that is the only way in).
//!
//! Cookies and basic-auth credentials travel with cross-site requests, so authentication alone
//! does not stop a foreign page: [`super::boundary`] checks Host, Origin and the CSRF token
//! before this module runs.

use std::net::SocketAddr;

use axum::Form;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use maud::{DOCTYPE, html};
use serde::Deserialize;

/// Name of the cookie that carries the token.
pub const TOKEN_COOKIE: &str = "fleet_token";

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

    fn admits(&self, headers: &HeaderMap) -> bool {
        match self {
            Auth::Open => true,
            Auth::Token(token) => {
                let bearer = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "));
                let cookie = cookie(headers, TOKEN_COOKIE);
                bearer
                    .into_iter()
                    .chain(cookie.as_deref())
                    .any(|t| constant_time_eq(t, token))
            }
            Auth::Basic { user, password } => headers
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
                }),
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

/// Middleware: authentication.
pub async fn guard(State(auth): State<Auth>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let public = path.starts_with("/assets/") || path == "/login" || path == "/favicon.ico";
    if public || auth.admits(request.headers()) {
        return next.run(request).await;
    }
    match auth {
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

/// `POST /login`: stores the token in a cookie when it is right.
pub async fn login(
    State(state): State<super::WebState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let ok = match &state.auth {
        Auth::Token(token) => constant_time_eq(form.token.trim(), token),
        _ => false,
    };
    if !ok {
        return (StatusCode::UNAUTHORIZED, Body::from("wrong token")).into_response();
    }
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v == "https");
    let cookie = format!(
        "{TOKEN_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict{}",
        form.token.trim(),
        if secure { "; Secure" } else { "" }
    );
    let mut response = Redirect::to("/").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
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
    fn comparison_is_exact() {
        assert!(constant_time_eq("secret", "secret"));
        assert!(!constant_time_eq("secret", "secret2"));
        assert!(!constant_time_eq("", "x"));
    }
}
