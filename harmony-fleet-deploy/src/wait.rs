//! Deadline polling for smoke tests: "applied" is not "working", so every Score waits for
//! proof, and says what it was waiting for and what it last saw when the deadline passes.

use std::future::Future;
use std::time::{Duration, Instant};

use harmony::interpret::InterpretError;

/// How often smoke tests poll.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// What one poll found.
#[derive(Debug)]
pub enum Poll<T> {
    /// Done, with this value.
    Ready(T),
    /// Not yet; the text says what was seen (shown if the deadline passes).
    Pending(String),
    /// Will never succeed (e.g. the process exited); the text says why.
    Failed(String),
}

/// Polls `check` every [`POLL_INTERVAL`] until it is ready, fails, or `deadline` passes.
/// `awaited` names what is waited for, as in "operator /readyz to say Converged".
pub async fn until<T, F, Fut>(
    awaited: &str,
    deadline: Duration,
    mut check: F,
) -> Result<T, InterpretError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Poll<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        let last = match check().await {
            Poll::Ready(value) => return Ok(value),
            Poll::Failed(reason) => {
                return Err(InterpretError::failed(format!(
                    "gave up waiting for {awaited}: {reason}"
                )));
            }
            Poll::Pending(seen) => seen,
        };
        if Instant::now() >= end {
            return Err(InterpretError::failed(format!(
                "timed out after {deadline:?} waiting for {awaited}; last seen: {last}"
            )));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reports_the_last_observation_on_timeout() {
        let err = until("the moon", Duration::from_millis(300), || async {
            Poll::<()>::Pending("still cheese".into())
        })
        .await
        .expect_err("never ready");
        let text = err.to_string();
        assert!(text.contains("waiting for the moon"), "{text}");
        assert!(text.contains("still cheese"), "{text}");
    }

    #[tokio::test]
    async fn stops_at_a_definite_failure() {
        let err = until("a process", Duration::from_secs(60), || async {
            Poll::<()>::Failed("it exited with status 3".into())
        })
        .await
        .expect_err("failed");
        assert!(err.to_string().contains("exited with status 3"));
    }
}
