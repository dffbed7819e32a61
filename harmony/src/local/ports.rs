//! Free loopback ports.
//!
//! A port is picked by binding `127.0.0.1:0` and releasing it before the server binds it, so
//! another process may grab it in between. Harnesses therefore check a failed start with
//! [`is_addr_in_use`] and retry with fresh ports, up to [`START_ATTEMPTS`] times.

use std::net::{Ipv4Addr, TcpListener};

use crate::local::error::{LocalError, Result};

/// How many times a harness tries to start a server on fresh ports before giving up.
pub const START_ATTEMPTS: usize = 3;

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| LocalError::io("binding 127.0.0.1:0 to pick a free port", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| LocalError::io("reading the picked port", e))?
        .port();
    Ok(port)
}

/// `n` distinct free ports (all held open together while picking, so they differ).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| {
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .map_err(|e| LocalError::io("binding 127.0.0.1:0 to pick a free port", e))
        })
        .collect::<Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .map(|a| a.port())
                .map_err(|e| LocalError::io("reading the picked port", e))
        })
        .collect()
}

/// Whether a start-up failure (its log tail or message) was a lost race for a port.
pub fn is_addr_in_use(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.contains("address already in use") || lower.contains("address in use")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_distinct_bindable_ports() {
        let ports = free_ports(4).expect("ports");
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 4);
        let port = free_port().expect("port");
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("still free");
    }

    #[test]
    fn recognises_address_in_use_messages() {
        assert!(is_addr_in_use(
            "listen tcp 127.0.0.1:4222: bind: address already in use"
        ));
        assert!(!is_addr_in_use("permission denied"));
    }
}
