//! Several sluice instances on one 3-node NATS cluster, each connected to its own node: publishing
//! across instances, JetStream clients that move between instances (or lose theirs) with their
//! `Last-Event-ID`, and memory replay ids that only their own instance knows.

use crate::jetstream::{orders_stream_at, publish_acked};
use crate::support::*;
use async_nats::jetstream;
use sluice_testkit::NatsCluster;
use std::future::IntoFuture;
use std::time::Duration;

/// Waits until `sluice` answers `/readyz` with 200: its broker connection is up.
async fn ready(sluice: &Sluice) {
    eventually("the instance ready", || async {
        let ready = get(sluice.addr, "/readyz").await.ok()?;
        (ready.status == 200).then_some(())
    })
    .await;
}

/// The same configuration on every instance but for the node (or nodes) it connects to: `url` is
/// a TOML string or list.
fn routes(url: &str) -> String {
    format!(
        r#"
[brokers.core]
type = "nats"
url = {url}

[[routes]]
path = "/chat/{{room}}"
broker = "core"
topic = "chat.{{room}}"
publish = true
replay = 100

[[routes]]
path = "/orders/{{shard}}"
broker = "core"
topic = "orders.{{shard}}"
jetstream = "ORDERS"
buffer = 20000
"#
    )
}

/// A 3-node NATS cluster and three sluice instances, instance `n` connected to node `n`.
struct Topology {
    sluices: Vec<Sluice>,
    // Dropped after the instances (fields drop in order), so they never see their node go away.
    cluster: NatsCluster,
}

impl Topology {
    async fn start() -> Self {
        let cluster = NatsCluster::start();
        let mut sluices = Vec::new();
        for url in cluster.urls() {
            let sluice = Sluice::start(&routes(&format!("\"{url}\""))).await;
            ready(&sluice).await;
            sluices.push(sluice);
        }
        Self { sluices, cluster }
    }

    /// The `ORDERS` stream, replicated on all three nodes, and a context that publishes to it
    /// through node 0.
    async fn orders(&self) -> jetstream::Context {
        orders_stream_at(&self.cluster.url(0), 3).await
    }
}

/// Publishes `0..events` on every shard `orders.0 ..`, in rounds: round `n` publishes `n` on each
/// shard and waits until the stream stored all of them, so each shard's orders are stored in order.
fn publish_rounds(
    js: jetstream::Context,
    shards: usize,
    events: usize,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for n in 0..events {
            let mut acks = Vec::with_capacity(shards);
            for shard in 0..shards {
                let ack = within(
                    "publish an order",
                    js.publish(format!("orders.{shard}"), n.to_string().into()),
                )
                .await
                .expect("publish an order");
                acks.push(ack);
            }
            for ack in acks {
                within("order stored", ack.into_future())
                    .await
                    .expect("order stored");
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_one_instance_gets_what_is_posted_on_another() {
    let topology = Topology::start().await;
    let (a, b) = (topology.sluices[0].addr, topology.sluices[1].addr);
    let mut stream = h1_stream(a, "/chat/lobby").await;
    stream.opened().await;
    // A's subscription reaches B's node through the cluster's routes a moment later: probe until
    // what B publishes comes through, then read the probes away.
    let post_on_b = |data: String| async move { publish(b, "/chat/lobby", data).await };
    stream.publish_until_received("probe", post_on_b).await;
    stream.settle(post_on_b).await;
    for text in ["one", "two", "three"] {
        publish(b, "/chat/lobby", text).await;
    }
    for text in ["one", "two", "three"] {
        assert_eq!(stream.next_event().await.data, text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_replay_id_of_another_instance_is_unknown() {
    let topology = Topology::start().await;
    let (a, b) = (topology.sluices[0].addr, topology.sluices[1].addr);
    let mut on_a = live_stream(a, "/chat/news").await;
    publish(a, "/chat/news", "headline").await;
    let event = on_a.next_event().await;
    assert_eq!(event.data, "headline");
    let id = event.id.expect("a replay route gives ids");
    // The id resumes on A, which holds the event in its memory ...
    publish(a, "/chat/news", "follow-up").await;
    let mut again = h1_stream_with(a, "/chat/news", &[("last-event-id", &id)]).await;
    assert_eq!(again.next_event().await.data, "follow-up");
    // ... and means nothing to B: memory replay is per instance.
    let mut on_b = h1_stream_with(b, "/chat/news", &[("last-event-id", &id)]).await;
    let gap = on_b.next_event().await;
    assert_eq!(gap.event, "gap");
    assert_eq!(gap.data, r#"{"reason":"unknown-id","lost":null}"#);
}

/// How many clients move between instances in one test, each on its own shard (so the topic it
/// moves to is its own: on half the moves a witness already watches it there, on the other half
/// the resume opens it, as for a lone browser), and how long each shard's burst is.
const MOVES: usize = 50;
const EVENTS: usize = 200;

/// What is wrong with `seen` if it is not `0..events` once each and in order: the first
/// difference, with the events around it.
fn exactly_once(seen: &[Event], events: usize) -> Result<(), String> {
    let around = |n: usize| {
        seen.iter()
            .skip(n.saturating_sub(3))
            .take(8)
            .map(|e| format!("{}={}", e.id.as_deref().unwrap_or("-"), e.data))
            .collect::<Vec<_>>()
            .join(" ")
    };
    for (n, event) in seen.iter().enumerate() {
        if event.event != "message" || event.data != n.to_string() {
            return Err(format!(
                "event #{n} is {} {:?}, not {n} (id=data around it: {})",
                event.event,
                event.data,
                around(n)
            ));
        }
    }
    if seen.len() != events {
        return Err(format!("{} events of {events}", seen.len()));
    }
    Ok(())
}

/// Fails the test with every failure, one per line, if there is any: `failures` of `out_of` clients
/// (named `what`).
fn assert_none_went_wrong(failures: &[String], out_of: usize, what: &str) {
    assert!(
        failures.is_empty(),
        "{} of {out_of} {what} went wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Awaits every task; a task that panicked fails the test with its own message.
async fn join_all<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        match task.await {
            Ok(result) => results.push(result),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    results
}

/// A client on shard `i` (its topic): its stream, where it moves to, and its path.
type Mover = (usize, SseStream, std::net::SocketAddr, String);

/// `moves` clients, client `i` on instance `i % 3` and moving to the next one, each on its own
/// shard; and a witness on the target instance for every other one, so half the moves land on a
/// topic already watched there.
async fn movers(topology: &Topology, moves: usize) -> (Vec<Mover>, Vec<Mover>) {
    let addrs: Vec<_> = topology.sluices.iter().map(|s| s.addr).collect();
    let mut clients = Vec::new();
    let mut witnesses = Vec::new();
    for i in 0..moves {
        let (from, to) = (addrs[i % 3], addrs[(i + 1) % 3]);
        let path = format!("/orders/{i}");
        let mut stream = h1_stream(from, &path).await;
        stream.opened().await;
        if i % 2 == 1 {
            let mut witness = h1_stream(to, &path).await;
            witness.opened().await;
            witnesses.push((i, witness, to, path.clone()));
        }
        clients.push((i, stream, to, path));
    }
    (clients, witnesses)
}

/// Issue 12 reported duplicates (5 to 10) or one lost event right after the resume point in 2 of 20
/// such moves between instances on different nodes; 50 moves a run keep watching for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_move_between_instances_mid_burst_exactly_once() {
    let topology = Topology::start().await;
    let js = topology.orders().await;
    let (clients, witnesses) = movers(&topology, MOVES).await;
    let burst = publish_rounds(js, MOVES, EVENTS);
    let last = (EVENTS - 1).to_string();
    let moves = clients.into_iter().map(|(i, mut stream, to, path)| {
        let last = last.clone();
        tokio::spawn(async move {
            // Moves spread over the burst, the earliest after the first event.
            let k = 1 + (i * 37) % (EVENTS - 20);
            let mut seen = Vec::new();
            while seen.len() < k {
                seen.push(stream.next_event().await);
            }
            let id = stream
                .last_event_id
                .clone()
                .expect("JetStream events carry ids");
            drop(stream);
            // As a browser behind a load balancer does: the same request, another instance.
            let mut moved = h1_stream_with(to, &path, &[("last-event-id", &id)]).await;
            seen.extend(moved.read_until(&last).await);
            exactly_once(&seen, EVENTS)
                .map_err(|e| format!("client {i}, moved after {k} events (id {id}): {e}"))
        })
    });
    let moves: Vec<_> = moves.collect();
    let watched = witnesses.into_iter().map(|(i, mut witness, _, _)| {
        let last = last.clone();
        tokio::spawn(async move {
            let seen = witness.read_until(&last).await;
            exactly_once(&seen, EVENTS).map_err(|e| format!("witness {i}: {e}"))
        })
    });
    let watched: Vec<_> = watched.collect();
    let failures: Vec<String> = join_all(moves)
        .await
        .into_iter()
        .chain(join_all(watched).await)
        .filter_map(Result::err)
        .collect();
    within("burst published", burst).await.expect("publisher");
    assert_none_went_wrong(&failures, MOVES, "moves (and their witnesses)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_instance_resume_on_the_others_exactly_once() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    const CLIENTS: usize = 20;
    const EVENTS: usize = 300;
    let topology = Topology::start().await;
    let js = topology.orders().await;
    let a = topology.sluices[0].addr;
    let others = [topology.sluices[1].addr, topology.sluices[2].addr];
    let received: Arc<Vec<AtomicUsize>> =
        Arc::new((0..CLIENTS).map(|_| AtomicUsize::new(0)).collect());
    let mut streams = Vec::new();
    for i in 0..CLIENTS {
        let mut stream = h1_stream(a, &format!("/orders/{i}")).await;
        stream.opened().await;
        streams.push(stream);
    }
    let burst = publish_rounds(js, CLIENTS, EVENTS);
    let last = (EVENTS - 1).to_string();
    let clients: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, mut stream)| {
            let (received, last) = (received.clone(), last.clone());
            let to = others[i % 2];
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while let Some(event) = stream.try_next_event(DEADLINE).await {
                    seen.push(event);
                    received[i].fetch_add(1, Ordering::Relaxed);
                }
                assert!(
                    stream.ended,
                    "client {i}: the stream went quiet but did not end"
                );
                if seen.last().map(|e| e.data.as_str()) != Some(last.as_str()) {
                    let id = stream
                        .last_event_id
                        .clone()
                        .expect("an event before the kill");
                    let path = format!("/orders/{i}");
                    let mut resumed = h1_stream_with(to, &path, &[("last-event-id", &id)]).await;
                    seen.extend(resumed.read_until(&last).await);
                }
                exactly_once(&seen, EVENTS).map_err(|e| format!("client {i}: {e}"))
            })
        })
        .collect();
    // Kill A mid-burst, once every client has an id to come back with.
    eventually("every client of A has events", || async {
        let counts: Vec<usize> = received.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        (counts.iter().all(|c| *c > 0) && counts.iter().sum::<usize>() >= CLIENTS * EVENTS / 3)
            .then_some(())
    })
    .await;
    topology.sluices[0].send_signal("KILL");
    let failures: Vec<String> = join_all(clients)
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect();
    within("burst published", burst).await.expect("publisher");
    assert_none_went_wrong(&failures, CLIENTS, "clients");
}

/// Which node of `cluster` holds sluice's connection (named `sluice/core`), from `/connz`.
fn node_of_sluice(cluster: &NatsCluster) -> Option<usize> {
    (0..cluster.len()).find(|n| {
        cluster.monitor(*n, "/connz").is_some_and(|json| {
            json["connections"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["name"] == "sluice/core")
        })
    })
}

/// A sluice given every node of the cluster (`url` as a list) loses the node it is on mid-burst:
/// it reconnects to another node, and a JetStream stream on it goes on with every event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jetstream_stream_goes_on_when_its_nats_node_goes_away() {
    const EVENTS: usize = 300;
    let mut cluster = NatsCluster::start();
    let urls: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let sluice = Sluice::start(&routes(&format!("[{}]", urls.join(", ")))).await;
    ready(&sluice).await;
    let on = eventually("sluice connected to a node", || async {
        node_of_sluice(&cluster)
    })
    .await;
    // The publisher connects to the two other nodes, so the node going away does not stop it.
    let others: Vec<String> = (0..cluster.len())
        .filter(|n| *n != on)
        .map(|n| cluster.url(n))
        .collect();
    orders_stream_at(&others[0], 3).await;
    let client = within("connect", async_nats::connect(others.clone()))
        .await
        .expect("connect the publisher");
    let js = jetstream::new(client);
    let mut stream = h1_stream(sluice.addr, "/orders/0").await;
    stream.opened().await;
    // Each order is published until the stream acknowledges it: while the stream's leader is being
    // elected again (it may have been on the stopped node) an acknowledgement can be lost, and the
    // message id keeps a retried publish from being stored twice.
    let burst = tokio::spawn(async move {
        for n in 0..EVENTS {
            publish_acked(&js, "orders.0".into(), n.to_string()).await;
        }
    });
    let mut seen = Vec::new();
    while seen.len() < EVENTS / 3 {
        seen.push(stream.next_event().await);
    }
    cluster.stop(on);
    let last = (EVENTS - 1).to_string();
    // The same stream goes on (a gap only if the live consumer had to be made again, and then the
    // events it may have missed are read back from the stream, so none is lost). The cluster first
    // elects new leaders for what the stopped node led: on 2 loaded cores a new consumer was seen
    // to take up to 15 s, so the wait for the next event is longer than the usual deadline.
    loop {
        let next = stream.try_next_event(3 * DEADLINE).await;
        let event = next.expect("the stream goes on after its node went away");
        let done = event.data == last;
        if event.event != "gap" {
            seen.push(event);
        }
        if done {
            break;
        }
    }
    within("the burst published", burst)
        .await
        .expect("publisher");
    if let Err(e) = exactly_once(&seen, EVENTS) {
        panic!("{e}");
    }
    let moved = eventually("sluice on another node", || async {
        node_of_sluice(&cluster).filter(|n| *n != on)
    })
    .await;
    assert_ne!(moved, on);
}

/// Publishes `0..events` on every shard as [`publish_rounds`] does, but each order with a message
/// id and again until it is acknowledged, so a round goes through stream leader changes (an
/// acknowledgement lost in an election is retried, and the id keeps the retry from being stored
/// twice).
fn publish_rounds_acked(
    js: jetstream::Context,
    shards: usize,
    events: usize,
) -> tokio::task::JoinHandle<()> {
    use async_nats::jetstream::message::PublishMessage;
    tokio::spawn(async move {
        for n in 0..events {
            let mut waiting: Vec<usize> = (0..shards).collect();
            let patience = tokio::time::timeout(3 * DEADLINE, async {
                while !waiting.is_empty() {
                    let mut acks = Vec::with_capacity(waiting.len());
                    for shard in &waiting {
                        let message = PublishMessage::build()
                            .payload(n.to_string().into())
                            .message_id(format!("{shard}-{n}"));
                        let ack = js.send_publish(format!("orders.{shard}"), message).await;
                        acks.push((*shard, ack));
                    }
                    let mut again = Vec::new();
                    for (shard, ack) in acks {
                        let stored = match ack {
                            Ok(ack) => tokio::time::timeout(Duration::from_millis(500), ack)
                                .await
                                .is_ok_and(|a| a.is_ok()),
                            Err(_) => false,
                        };
                        if !stored {
                            again.push(shard);
                        }
                    }
                    if !again.is_empty() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    waiting = again;
                }
            });
            patience.await.expect("a round of orders stored");
        }
    })
}

/// Reads `path` on `to` from `id` on until `last`, into `seen`, as a browser does: a refused or
/// ended stream is asked for again with the last id received. Returns how many times it asked again.
async fn follow(
    to: std::net::SocketAddr,
    path: &str,
    mut id: String,
    last: &str,
    seen: &mut Vec<Event>,
) -> usize {
    let mut retries = 0;
    loop {
        let mut stream = h1_stream_with(to, path, &[("last-event-id", &id)]).await;
        if stream.status == 200 {
            while let Some(event) = stream.try_next_event(3 * DEADLINE).await {
                let done = event.data == last;
                seen.push(event);
                if done {
                    return retries;
                }
            }
            assert!(stream.ended, "the stream went quiet but did not end");
            if let Some(newer) = stream.last_event_id.clone() {
                id = newer;
            }
        }
        retries += 1;
        assert!(retries < 20, "asked again 20 times");
        // A browser's retry interval.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What disturbs the cluster while clients move (`SLUICE_DISTURB`, for runs by hand: `stream`,
/// `meta`, `pause` or `all`, the default).
async fn disturb(
    cluster: &NatsCluster,
    mode: &str,
    done: &std::sync::atomic::AtomicBool,
    mut moving: tokio::sync::mpsc::UnboundedReceiver<usize>,
) -> usize {
    use std::sync::atomic::Ordering;
    let client = within("connect", async_nats::connect(cluster.url(0)))
        .await
        .expect("connect the disturber");
    let mut turns = 0;
    if mode == "at-move" {
        // Each move tells its target node just before it resumes there: the stream's leader steps
        // down, or that node freezes, as the resume reads back.
        while !done.load(Ordering::Acquire) {
            let Ok(Some(n)) = tokio::time::timeout(Duration::from_millis(50), moving.recv()).await
            else {
                continue;
            };
            turns += 1;
            match turns % 5 {
                // Not node 0: the publisher's.
                0 | 2 if n != 0 => {
                    cluster.pause(n);
                    tokio::time::sleep(Duration::from_millis(700)).await;
                    cluster.resume(n);
                    while moving.try_recv().is_ok() {}
                }
                0..=3 => {
                    let client = client.clone();
                    tokio::spawn(async move {
                        let _ = client
                            .request("$JS.API.STREAM.LEADER.STEPDOWN.ORDERS", "".into())
                            .await;
                    });
                }
                _ => {
                    let client = client.clone();
                    tokio::spawn(async move {
                        let _ = client
                            .request("$JS.API.META.LEADER.STEPDOWN", "".into())
                            .await;
                    });
                }
            }
        }
        return turns;
    }
    while !done.load(Ordering::Acquire) {
        turns += 1;
        let kind = match mode {
            "all" => ["pause", "stream"][turns % 2],
            other => other,
        };
        match kind {
            "stream" => {
                let r = tokio::time::timeout(
                    Duration::from_secs(2),
                    client.request("$JS.API.STREAM.LEADER.STEPDOWN.ORDERS", "".into()),
                )
                .await;
                if std::env::var("SLUICE_DISTURB_LOG").is_ok() {
                    eprintln!("stepdown: {:?}", r.map(|r| r.map(|m| m.payload)));
                }
            }
            "meta" => {
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    client.request("$JS.API.META.LEADER.STEPDOWN", "".into()),
                )
                .await;
            }
            "pause" => {
                // A node an instance (and its resumes) is connected to, not the publisher's.
                let n = 1 + turns % 2;
                cluster.pause(n);
                tokio::time::sleep(Duration::from_millis(300)).await;
                cluster.resume(n);
            }
            other => panic!("unknown disturbance {other}"),
        }
        let pause = std::env::var("SLUICE_DISTURB_EVERY")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(100);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    turns
}

/// Issue 12's symptom (duplicates, or one lost event, right after the resume point) was suspected
/// to need leader changes: the same moves as
/// [`clients_move_between_instances_mid_burst_exactly_once`] while the cluster's stream and meta
/// leaders step down and nodes freeze for a second.
///
/// Ignored in CI: it takes 3 s to 50 s and JetStream itself can stop acknowledging publishes for
/// longer than the test waits after a freeze on 2 loaded cores. About 1,900 moves under every mode
/// found no duplicate and no loss. To run it: `SLUICE_DISTURB=stream|meta|pause|all|at-move
/// SLUICE_DISTURB_EVERY=<ms> cargo test --test it cluster::clients_move_between_instances_during
/// -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow and at the mercy of JetStream elections; run by hand (see above)"]
async fn clients_move_between_instances_during_leader_changes_exactly_once() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    const MOVES: usize = 24;
    const EVENTS: usize = 150;
    let mode = std::env::var("SLUICE_DISTURB").unwrap_or_else(|_| "all".into());
    let topology = Topology::start().await;
    let js = topology.orders().await;
    let (clients, witnesses) = movers(&topology, MOVES).await;
    let burst = publish_rounds_acked(js, MOVES, EVENTS);
    let last = (EVENTS - 1).to_string();
    let gaps = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Gaps are counted apart (a live consumer made again says `gap`); what is checked is the
    // events themselves.
    let events_of = |seen: Vec<Event>, gaps: &std::sync::atomic::AtomicUsize| {
        let (gap, events): (Vec<Event>, Vec<Event>) =
            seen.into_iter().partition(|e| e.event == "gap");
        gaps.fetch_add(gap.len(), Ordering::Relaxed);
        for g in &gap {
            eprintln!("GAP id={:?} data={}", g.id, g.data);
        }
        events
    };
    let (moving, moves_seen) = tokio::sync::mpsc::unbounded_channel();
    let moves: Vec<_> = clients
        .into_iter()
        .map(|(i, mut stream, to, path)| {
            let (last, gaps, moving) = (last.clone(), gaps.clone(), moving.clone());
            tokio::spawn(async move {
                let k = 1 + (i * 37) % (EVENTS - 20);
                let mut seen = Vec::new();
                while seen.iter().filter(|e: &&Event| e.event != "gap").count() < k {
                    // A stream that ends early moves early.
                    let Some(event) = stream.try_next_event(3 * DEADLINE).await else {
                        break;
                    };
                    seen.push(event);
                }
                let id = stream
                    .last_event_id
                    .clone()
                    .expect("JetStream events carry ids");
                drop(stream);
                let _ = moving.send((i + 1) % 3);
                let retries = follow(to, &path, id.clone(), &last, &mut seen).await;
                exactly_once(&events_of(seen, &gaps), EVENTS).map_err(|e| {
                    format!("client {i}, moved after {k} events (id {id}, {retries} retries): {e}")
                })
            })
        })
        .collect();
    let watched: Vec<_> = witnesses
        .into_iter()
        .map(|(i, mut witness, to, path)| {
            let (last, gaps) = (last.clone(), gaps.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while let Some(event) = witness.try_next_event(3 * DEADLINE).await {
                    let done = event.data == last;
                    seen.push(event);
                    if done {
                        break;
                    }
                }
                if seen.last().map(|e| e.data.as_str()) != Some(last.as_str()) {
                    let id = witness.last_event_id.clone().expect("an event");
                    follow(to, &path, id, &last, &mut seen).await;
                }
                exactly_once(&events_of(seen, &gaps), EVENTS)
                    .map_err(|e| format!("witness {i}: {e}"))
            })
        })
        .collect();
    let done = Arc::new(AtomicBool::new(false));
    let finished = done.clone();
    let waited = async {
        let failures: Vec<String> = join_all(moves)
            .await
            .into_iter()
            .chain(join_all(watched).await)
            .filter_map(Result::err)
            .collect();
        finished.store(true, Ordering::Release);
        failures
    };
    let (failures, turns) =
        tokio::join!(waited, disturb(&topology.cluster, &mode, &done, moves_seen));
    within("burst published", burst).await.expect("publisher");
    eprintln!(
        "disturbances ({mode}): {turns}, gaps: {}",
        gaps.load(Ordering::Relaxed)
    );
    assert_none_went_wrong(&failures, MOVES, "moves (and their witnesses)");
}
