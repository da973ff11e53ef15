//! Dashboard-grade streams (issue 15): latest-value conflation with `max_rate`, per concrete
//! topic and per stream, against the real binary.

use crate::support::*;
use std::time::Instant;

const ROUTES: &str = r#"
[brokers.m]
type = "memory"

[[routes]]
path = "/in/{device}"
broker = "m"
topic = "dev/{device}"
publish = true

[[routes]]
path = "/devices"
broker = "m"
topic = "dev/#"
event = "{topic}"
max_rate = "4/s"
buffer = 4
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_conflated_to_its_newest_value_and_a_quiet_topic_still_gets_through() {
    let admin = format!("127.0.0.1:{}", sluice_testkit::free_port());
    let sluice = Sluice::start(&format!("{ROUTES}\n[admin]\nlisten = \"{admin}\"\n")).await;
    let addr = sluice.addr;
    let mut stream = h1_stream(addr, "/devices").await;
    stream.opened().await;
    let warm = |data: String| async move { publish(addr, "/in/warm", data).await };
    stream.publish_until_received("warm", warm).await;
    stream.settle(warm).await;
    // 40 values of one device as fast as they can be published (more than the stream's buffer of
    // 4), and one of another device in the middle.
    let start = Instant::now();
    for n in 1..=40 {
        publish(addr, "/in/a", format!("a-{n}")).await;
        if n == 20 {
            publish(addr, "/in/b", "b-1").await;
        }
    }
    let events = stream.read_until("a-40").await;
    let elapsed = start.elapsed();
    let of_a: Vec<u32> = events
        .iter()
        .filter(|e| e.event == "dev/a")
        .filter_map(|e| e.data.strip_prefix("a-")?.parse().ok())
        .collect();
    // The first value at once, then at most one every 250 ms, ending on the newest.
    assert_eq!(of_a.first(), Some(&1), "{of_a:?}");
    assert_eq!(of_a.last(), Some(&40), "{of_a:?}");
    assert!(of_a.windows(2).all(|w| w[0] < w[1]), "in order: {of_a:?}");
    let allowed = 2 + (elapsed.as_millis() / 250) as usize;
    assert!(
        of_a.len() <= allowed,
        "{} events in {elapsed:?}: {of_a:?}",
        of_a.len()
    );
    // The quiet device is not starved by the busy one, and nothing was dropped with a gap.
    assert!(events.iter().any(|e| e.event == "dev/b" && e.data == "b-1"));
    assert!(events.iter().all(|e| e.event != "gap"), "{events:?}");
    assert_eq!(stream.status, 200);
    // Every value of the busy device went out or was replaced by a newer one, and is counted (the
    // warm-up's probes may have been conflated too).
    let admin = admin.parse().expect("admin address");
    let metrics = get(admin, "/metrics").await.expect("metrics").text();
    let conflated = metrics
        .lines()
        .find(|l| l.starts_with("sluice_events_conflated_total{route=\"/devices\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
        .unwrap_or(0);
    assert!(conflated >= 40 - of_a.len(), "{conflated}: {metrics}");
}
