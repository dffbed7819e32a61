//! Sign-in sessions of the dashboard, and the rate limit on sign-in attempts.
//!
//! Signing in with the token on `/login` opens a session: a random id in an `HttpOnly`,
//! `SameSite=Strict` cookie, valid for `--web-session-minutes` (the token itself never goes
//! into a cookie). Sessions live in this process: a restart signs everyone out. Failed
//! sign-ins are counted per client address: after [`LOGIN_ATTEMPTS`] within
//! [`LOGIN_WINDOW`], further attempts are answered 429 until the window ends.
//!
//! The bookkeeping takes the time as an argument, so it is tested without clocks.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::RngCore;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "fleet_session";

/// How long a session lasts by default (a working day).
pub const DEFAULT_SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);

/// Failed sign-ins allowed per client address within [`LOGIN_WINDOW`].
pub const LOGIN_ATTEMPTS: u32 = 5;

/// The window over which failed sign-ins are counted.
pub const LOGIN_WINDOW: Duration = Duration::from_secs(60);

/// Sessions at most; the oldest is dropped beyond it (bounds memory under a login loop).
const MAX_SESSIONS: usize = 10_000;

#[derive(Debug)]
struct Session {
    who: String,
    expires: Instant,
}

#[derive(Debug)]
struct Failures {
    started: Instant,
    count: u32,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<String, Session>,
    failures: HashMap<Option<IpAddr>, Failures>,
}

/// The open sessions and recent failed sign-ins (cheap to clone: shared).
#[derive(Clone, Debug)]
pub struct Sessions {
    lifetime: Duration,
    inner: Arc<Mutex<Inner>>,
}

impl Default for Sessions {
    fn default() -> Self {
        Self::new(DEFAULT_SESSION_LIFETIME)
    }
}

impl Sessions {
    /// Sessions lasting `lifetime`.
    pub fn new(lifetime: Duration) -> Self {
        Self {
            lifetime,
            inner: Arc::default(),
        }
    }

    /// How long a session lasts.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain maps behind: still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a session for `who` at `now`; returns its id (the cookie value).
    pub fn open(&self, who: &str, now: Instant) -> String {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let id = hex::encode(bytes);
        let mut inner = self.lock();
        inner.sessions.retain(|_, s| s.expires > now);
        if inner.sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = inner
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        {
            inner.sessions.remove(&oldest);
        }
        inner.sessions.insert(
            id.clone(),
            Session {
                who: who.to_owned(),
                expires: now + self.lifetime,
            },
        );
        id
    }

    /// Who the session `id` belongs to, if it is open at `now` (an expired one is dropped).
    pub fn who(&self, id: &str, now: Instant) -> Option<String> {
        let mut inner = self.lock();
        match inner.sessions.get(id) {
            Some(s) if s.expires > now => Some(s.who.clone()),
            Some(_) => {
                inner.sessions.remove(id);
                None
            }
            None => None,
        }
    }

    /// Closes the session `id` (sign-out).
    pub fn close(&self, id: &str) {
        self.lock().sessions.remove(id);
    }

    /// Whether `client` may try to sign in at `now`; `Err` holds how long until it may.
    pub fn may_try(&self, client: Option<IpAddr>, now: Instant) -> Result<(), Duration> {
        let mut inner = self.lock();
        let Some(f) = inner.failures.get(&client) else {
            return Ok(());
        };
        let ends = f.started + LOGIN_WINDOW;
        if now >= ends {
            inner.failures.remove(&client);
            return Ok(());
        }
        if f.count >= LOGIN_ATTEMPTS {
            return Err(ends - now);
        }
        Ok(())
    }

    /// Records a failed sign-in of `client` at `now`.
    pub fn failed(&self, client: Option<IpAddr>, now: Instant) {
        let mut inner = self.lock();
        inner.failures.retain(|_, f| now < f.started + LOGIN_WINDOW);
        inner
            .failures
            .entry(client)
            .or_insert(Failures {
                started: now,
                count: 0,
            })
            .count += 1;
    }

    /// Forgets `client`'s failures after it signed in.
    pub fn succeeded(&self, client: Option<IpAddr>) {
        self.lock().failures.remove(&client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_valid_until_it_expires_and_until_it_is_closed() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let t = Instant::now();
        let id = sessions.open("token", t);
        assert_eq!(id.len(), 64);
        assert_eq!(sessions.who(&id, t).as_deref(), Some("token"));
        assert_eq!(
            sessions.who(&id, t + Duration::from_secs(59)).as_deref(),
            Some("token")
        );
        assert_eq!(sessions.who(&id, t + Duration::from_secs(60)), None);
        // Gone once seen expired, even for an earlier clock.
        assert_eq!(sessions.who(&id, t), None);

        let other = sessions.open("token", t);
        assert_ne!(other, id);
        sessions.close(&other);
        assert_eq!(sessions.who(&other, t), None);
        assert_eq!(sessions.who("made-up", t), None);
    }

    #[test]
    fn sign_ins_are_limited_per_client_and_window() {
        let sessions = Sessions::default();
        let t = Instant::now();
        let (a, b) = (
            Some("10.0.0.1".parse().unwrap()),
            Some("10.0.0.2".parse().unwrap()),
        );
        for _ in 0..LOGIN_ATTEMPTS {
            assert_eq!(sessions.may_try(a, t), Ok(()));
            sessions.failed(a, t);
        }
        let later = t + Duration::from_secs(10);
        assert_eq!(
            sessions.may_try(a, later),
            Err(LOGIN_WINDOW - Duration::from_secs(10))
        );
        assert_eq!(
            sessions.may_try(b, later),
            Ok(()),
            "other clients are not affected"
        );
        assert_eq!(
            sessions.may_try(a, t + LOGIN_WINDOW),
            Ok(()),
            "the window ends"
        );
    }

    #[test]
    fn a_successful_sign_in_clears_the_failures() {
        let sessions = Sessions::default();
        let t = Instant::now();
        for _ in 0..LOGIN_ATTEMPTS {
            sessions.failed(None, t);
        }
        assert!(sessions.may_try(None, t).is_err());
        sessions.succeeded(None);
        assert_eq!(sessions.may_try(None, t), Ok(()));
    }
}
