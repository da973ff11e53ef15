//! `/metrics`: the registry in Prometheus text format 0.0.4, or in OpenMetrics text 1.0.0 when the
//! scraper's `Accept` prefers it; and the values read at scrape time (broker states, connections).
//!
//! The `prometheus` crate writes 0.0.4. The two formats differ, for the metrics sluice has, only in
//! the name a counter family carries on its `HELP` and `TYPE` lines (OpenMetrics leaves `_total`
//! to the samples) and in the closing `# EOF`: those are adjusted, everything else is as written.

use super::metrics::global;
use crate::connections::Connections;
use crate::http::Routing;

const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Sets what is read rather than recorded: each broker's state and counts, and the connections.
pub fn refresh(routing: &Routing, connections: &Connections) {
    let metrics = global();
    for (broker, bridge) in routing.config.brokers.iter().zip(&routing.bridges) {
        let status = bridge.status();
        let name = [broker.name.as_str()];
        metrics
            .broker_up
            .with_label_values(&name)
            .set(i64::from(status.connected));
        metrics
            .broker_subscriptions
            .with_label_values(&name)
            .set(i64::try_from(status.subscriptions).unwrap_or(i64::MAX));
        // The bridge counts; the counter follows it (a replaced broker starts again from 0, which
        // Prometheus reads as a counter reset).
        for (counter, value) in [
            (&metrics.broker_reconnects, status.reconnects),
            (&metrics.broker_messages, status.messages),
        ] {
            let counter = counter.with_label_values(&name);
            if value < counter.get() {
                counter.reset();
            }
            counter.inc_by(value - counter.get());
        }
    }
    let open = connections.open_by_protocol();
    for (protocol, n) in [
        ("http1", open.http1),
        ("http2", open.http2),
        ("unknown", open.unknown),
    ] {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        metrics
            .connections_open
            .with_label_values(&[protocol])
            .set(n);
    }
}

/// The exposition for a scraper that sent `accept`: its content type and body.
pub fn render(accept: Option<&str>) -> (&'static str, String) {
    let text = String::from_utf8_lossy(&global().encode()).into_owned();
    if prefers_openmetrics(accept.unwrap_or("")) {
        (OPENMETRICS, openmetrics(&text))
    } else {
        (TEXT, text)
    }
}

/// Whether an `Accept` header ranks OpenMetrics text at least as high as plain text (Prometheus
/// itself asks for OpenMetrics first).
fn prefers_openmetrics(accept: &str) -> bool {
    let mut best = (0.0_f32, 0.0_f32);
    for item in accept.split(',') {
        let mut parts = item.split(';').map(str::trim);
        let kind = parts.next().unwrap_or("").to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        match kind.as_str() {
            "application/openmetrics-text" => best.0 = best.0.max(q),
            "text/plain" | "*/*" => best.1 = best.1.max(q),
            _ => {}
        }
    }
    best.0 > 0.0 && best.0 >= best.1
}

/// 0.0.4 text as OpenMetrics: counter families named without `_total` on their `HELP` and
/// `TYPE` lines, and `# EOF` at the end.
fn openmetrics(text: &str) -> String {
    let counters: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len() + 8);
    for line in text.lines() {
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let name = counters.iter().find(|name| {
                rest.strip_prefix(**name)
                    .is_some_and(|r| r.starts_with(' '))
            })?;
            let family = name.strip_suffix("_total")?;
            Some(format!("{prefix}{family}{}", &rest[name.len()..]))
        });
        match renamed {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out.push_str("# EOF\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_asks_for_openmetrics_and_curl_gets_text() {
        let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert!(prefers_openmetrics(prometheus));
        assert!(!prefers_openmetrics("*/*"));
        assert!(!prefers_openmetrics(""));
        assert!(!prefers_openmetrics("text/plain"));
        assert!(!prefers_openmetrics("application/openmetrics-text;q=0"));
    }

    #[test]
    fn counters_lose_total_on_their_family_lines_only() {
        let text = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 2\n# HELP b B.\n# TYPE b gauge\nb 1\n";
        assert_eq!(
            openmetrics(text),
            "# HELP a A.\n# TYPE a counter\na_total{x=\"1\"} 2\n# HELP b B.\n# TYPE b gauge\nb 1\n# EOF\n"
        );
    }
}
