//! Readiness: ready when every broker a route uses is connected and the process is not draining;
//! the plain-text answer lists each broker and its state (served by the public listeners and the
//! admin listener alike).

use crate::http::Routing;
use std::fmt::Write;

/// The status and body of `/readyz`: `200` when ready, `503` when not.
pub fn readiness(routing: &Routing, draining: bool) -> (u16, String) {
    let config = &routing.config;
    let mut ready = !draining;
    let mut lines = String::new();
    if draining {
        lines.push_str("draining: shutting down or upgrading\n");
    }
    for (index, broker) in config.brokers.iter().enumerate() {
        let used = config.routes.iter().any(|r| r.broker == index);
        let up = routing
            .bridges
            .get(index)
            .is_some_and(|b| b.status().connected);
        let state = if up { "up" } else { "down" };
        if used && !up {
            ready = false;
        }
        let note = if used { "" } else { " (no route uses it)" };
        let _ = writeln!(lines, "broker {}: {state}{note}", broker.name);
    }
    let head = if ready { "ready\n" } else { "not ready\n" };
    (if ready { 200 } else { 503 }, format!("{head}{lines}"))
}
