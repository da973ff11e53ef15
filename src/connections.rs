//! Client connections: a place each under the file limit; closed once idle for `request_timeout`.
//!
//! pingora bounds none of the phases before a request on a cleartext port: it peeks for the 24-byte
//! h2c preface with `read_exact`, then runs the h2 handshake and an accept loop that waits for
//! streams, all without a deadline. [`Bounded`] wraps the gateway's pingora app: each connection's
//! whole stay in pingora runs beside a close signal, and [`Connections`] decides when to send it.
//!
//! - Every connection holds a place in a budget derived from the file limit ([`budget`]), from its
//!   accept until its socket is released (by pingora's task, or by the task of the HTTP/1.1 stream
//!   that took the socket over: such a stream is then only counted, it has no entry of its own).
//! - A connection is *busy* while a request is handled on it or a stream it carries lives
//!   ([`Connections::request`] hands out a [`Busy`] guard, which a stream keeps). Otherwise it is
//!   *idle*: before its first byte, during the h2c preface or the h2 handshake, while an HTTP/1.1
//!   request head is arriving or between keep-alive requests, and on an h2 connection whose
//!   streams have all ended. An idle connection is closed `request_timeout` after it became idle.
//! - When the budget is full, a new connection makes room by closing the connection that has been
//!   idle the longest; when none is idle, the new one is closed instead.
//!
//! Requests find their connection by its kernel socket cookie (`SO_COOKIE`), which unlike a file
//! descriptor number is never reused, so a closing connection cannot be confused with a new one.
//! The idle connections wait in one queue in the order they became idle; one task closes them as
//! they expire, so no connection or stream has a timer or a task of its own for this.

use crate::pump::SharedDuration;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Files sluice keeps for itself: standard streams and the log, listeners, broker connections,
/// runtime event queues (about 20 in all were open with one listener on 2 cores).
const OWN_FILES: u64 = 64;
/// Sockets not yet counted or not yet released: pingora's accept loop takes up to tokio's
/// cooperative budget (128) of queued connections in one turn before their tasks run and take
/// their places here, and a connection closed to make room releases its file only when its own
/// task runs next. Without this room a flood runs into `Too many open files` before the budget is
/// full (seen with a flood of 400 at a limit of 256), and pingora then stops accepting for a second.
const ACCEPT_BURST: u64 = 2 * 128;
/// A share of the limit kept beside those, for what grows with the load: TLS handshakes in
/// progress (pingora runs them, bounded by its own 60 s, before sluice sees the connection) and
/// requests reading static files.
const RESERVED_SHARE: u64 = 64;
/// The fewest connections the budget allows, however small the file limit.
const MIN_BUDGET: usize = 8;

/// The file limit after [`raise_file_limit`], and how many client connections fit in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileBudget {
    pub file_limit: u64,
    pub connections: usize,
}

/// Raises the soft limit on open files to the hard limit (a process may do so by itself), and
/// returns the limit now in force with the connections it leaves room for.
pub fn raise_file_limit() -> std::io::Result<FileBudget> {
    let (soft, hard) = rlimit::Resource::NOFILE.get()?;
    if soft < hard {
        // Where the hard limit is "unlimited" the kernel still caps open files (`fs.nr_open`, by
        // default 2^20); ask for that. A refusal keeps the soft limit, and the budget with it.
        let target = if hard == rlimit::INFINITY {
            1 << 20
        } else {
            hard
        };
        if let Err(e) = rlimit::Resource::NOFILE.set(target, hard) {
            tracing::warn!(error = %e, soft, hard, "could not raise the open-file limit");
        }
    }
    let (soft, _) = rlimit::Resource::NOFILE.get()?;
    Ok(FileBudget {
        file_limit: soft,
        connections: budget(soft),
    })
}

/// How many client connections fit in `file_limit` open files, after what sluice keeps for itself
/// (never fewer than [`MIN_BUDGET`]).
pub fn budget(file_limit: u64) -> usize {
    let reserve = OWN_FILES + ACCEPT_BURST + file_limit / RESERVED_SHARE;
    let fits = usize::try_from(file_limit.saturating_sub(reserve)).unwrap_or(usize::MAX);
    fits.max(MIN_BUDGET)
}

/// The open client connections, their budget and their idle clocks.
pub struct Connections {
    budget: usize,
    /// The `request_timeout`; a reload may change it ([`Connections::set_idle_timeout`]).
    idle_timeout: SharedDuration,
    state: Mutex<State>,
    /// Wakes the sweeper when the idle queue stops being empty.
    wake_sweeper: Notify,
    sweeper: Once,
}

#[derive(Default)]
struct State {
    /// Every open connection that requests can be matched to, by socket cookie.
    slots: HashMap<u64, Slot>,
    /// Open connections that have no socket cookie (not expected on Linux): they are counted, but
    /// never taken for idle, as their requests cannot be seen.
    untracked: usize,
    /// [`Busy`] guards whose connection's task has let go: an HTTP/1.1 stream, which owns its
    /// socket then (or, for a moment, a stream of an h2 connection that has ended). Each counts as
    /// a connection until dropped; keeping them out of `slots` saves every such stream an entry.
    detached: usize,
    /// Slots told to close whose sockets are not released yet: not counted against the budget.
    closing: usize,
    /// Connections in the order they became idle. An entry is stale once its connection turned
    /// busy or closed (its `seq` no longer matches); stale entries are skipped and dropped.
    idle: VecDeque<IdleSince>,
    /// Connections idle now: each has one current entry in `idle`, the rest are stale.
    idle_now: usize,
    /// Set once a full budget was logged, until the connections drop well below it again.
    full_logged: bool,
}

/// One connection in pingora's hands (with its task in [`Bounded`]).
struct Slot {
    /// Requests being handled and streams open on this connection.
    busy: u32,
    /// Counts the times the connection became idle; its current idle-queue entry carries it.
    idle_seq: u32,
    closing: bool,
    /// Whether its requests are HTTP/2 (`None` until its first request).
    http2: Option<bool>,
    /// Wakes the connection's task in [`Bounded`] to drop the connection.
    closer: Arc<Notify>,
}

impl Slot {
    fn is_idle(&self) -> bool {
        self.busy == 0 && !self.closing
    }
}

struct IdleSince {
    key: u64,
    seq: u32,
    since: Instant,
}

impl State {
    fn open(&self) -> usize {
        self.slots.len() + self.untracked + self.detached
    }

    /// Open connections not told to close: what the budget limits.
    fn live(&self) -> usize {
        self.open().saturating_sub(self.closing)
    }

    /// Whether the idle-queue entry `seq` of `key` is current: the connection is idle since then.
    fn is_idle(&self, key: u64, seq: u32) -> bool {
        self.slots
            .get(&key)
            .is_some_and(|slot| slot.is_idle() && slot.idle_seq == seq)
    }

    /// Starts the idle clock of `key` (not idle until now) now. Returns whether the queue was empty
    /// (the sweeper then waits to be woken).
    fn start_idle(&mut self, key: u64) -> bool {
        let Some(slot) = self.slots.get_mut(&key) else {
            return false;
        };
        slot.idle_seq = slot.idle_seq.wrapping_add(1);
        let seq = slot.idle_seq;
        self.idle_now += 1;
        let was_empty = self.idle.is_empty();
        // Every connection starts idle and most turn busy at once (an SSE client asks for its
        // stream), each leaving a stale entry; the sweeper drops them only when they reach the
        // front. Compacting when stale entries outnumber current ones keeps the queue near the
        // number of idle connections (each compaction drops at least half, so it runs once per
        // that many turns, not per turn), not near the number of streams.
        if self.idle.len() > 2 * self.idle_now + 64 {
            let idle = std::mem::take(&mut self.idle);
            self.idle = idle
                .into_iter()
                .filter(|e| self.is_idle(e.key, e.seq))
                .collect();
        }
        self.idle.push_back(IdleSince {
            key,
            seq,
            since: Instant::now(),
        });
        was_empty
    }

    /// Takes the connection that has been idle the longest out of the queue, if `due` says so.
    fn pop_idle(&mut self, due: impl Fn(Instant) -> bool) -> Option<u64> {
        while let Some(front) = self.idle.front() {
            if !self.is_idle(front.key, front.seq) {
                self.idle.pop_front();
                continue;
            }
            if !due(front.since) {
                return None;
            }
            return self.idle.pop_front().map(|e| e.key);
        }
        None
    }

    /// Tells the task of `key` to drop its connection; its slot is released when it has.
    fn close(&mut self, key: u64) {
        if let Some(slot) = self.slots.get_mut(&key) {
            if slot.is_idle() {
                self.idle_now = self.idle_now.saturating_sub(1);
            }
            if !slot.closing {
                slot.closing = true;
                self.closing += 1;
            }
            // Stored as a permit if the task is not waiting at this instant.
            slot.closer.notify_one();
        }
    }

    fn remove(&mut self, key: u64) {
        if let Some(slot) = self.slots.remove(&key) {
            if slot.is_idle() {
                self.idle_now = self.idle_now.saturating_sub(1);
            }
            if slot.closing {
                self.closing = self.closing.saturating_sub(1);
            }
        }
    }
}

/// See [`Connections::open_by_protocol`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenByProtocol {
    pub http1: usize,
    pub http2: usize,
    /// No request yet (or not trackable).
    pub unknown: usize,
}

/// Why a new connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl Connections {
    /// `budget` connections at most; idle ones closed after `idle_timeout` (the `request_timeout`).
    pub fn new(budget: usize, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            budget,
            idle_timeout: SharedDuration::new(idle_timeout),
            state: Mutex::new(State::default()),
            wake_sweeper: Notify::new(),
            sweeper: Once::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Each update is complete before the lock is released.
        sluice_bridge::lock(&self.state)
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    /// A new idle timeout (a reloaded `request_timeout`), for connections that become idle from
    /// now on (and those idle now, from the sweeper's next pass).
    pub fn set_idle_timeout(&self, idle_timeout: Duration) {
        self.idle_timeout.set(idle_timeout);
    }

    /// Connections open now (those being closed included).
    pub fn open(&self) -> usize {
        self.state().open()
    }

    /// Admits a new connection (`key`: its socket cookie), idle from now. With the budget full it
    /// first closes the connection idle the longest, or refuses this one when none is idle.
    pub fn admit(self: &Arc<Self>, key: Option<u64>) -> Result<Attached, Full> {
        let mut state = self.state();
        if state.live() < self.budget * 9 / 10 {
            state.full_logged = false;
        }
        // Cookies are unique, and pingora's HTTP app never hands a connection back for another
        // admission; should a key be taken anyway, the connection is only counted.
        let key = key.filter(|key| !state.slots.contains_key(key));
        if state.live() >= self.budget {
            let evicted = state.pop_idle(|_| true);
            if !std::mem::replace(&mut state.full_logged, true) {
                tracing::warn!(
                    budget = self.budget,
                    "every connection the open-file limit allows is taken: new connections close \
                     the longest-idle ones, or are refused when none is idle"
                );
            }
            match evicted {
                Some(victim) => {
                    tracing::debug!("closing the longest-idle connection to make room");
                    state.close(victim);
                }
                None => {
                    tracing::debug!("connection refused: the budget is full and none is idle");
                    return Err(Full);
                }
            }
        }
        let closer = Arc::new(Notify::new());
        match key {
            Some(key) => {
                state.slots.insert(
                    key,
                    Slot {
                        busy: 0,
                        idle_seq: 0,
                        closing: false,
                        http2: None,
                        closer: closer.clone(),
                    },
                );
                if state.start_idle(key) {
                    self.wake_sweeper.notify_one();
                }
            }
            None => state.untracked += 1,
        }
        drop(state);
        Ok(Attached {
            connections: self.clone(),
            key,
            closer,
        })
    }

    /// Marks the connection of `session` busy while a request is handled on it; a stream keeps the
    /// guard for as long as it lives. `None` for a connection that is not tracked.
    pub fn request(self: &Arc<Self>, session: &ServerSession) -> Option<Busy> {
        let key = session
            .digest()?
            .socket_digest
            .as_ref()?
            .socket_cookie()
            .ok()?;
        self.mark_busy(key, Some(session.is_http2()))
    }

    /// The connections open now by the protocol of their requests (for metrics; it walks every
    /// connection, so it is for a scrape, not for each request). An HTTP/1.1 stream that took its
    /// socket over from pingora is an HTTP/1.1 connection.
    pub fn open_by_protocol(&self) -> OpenByProtocol {
        let state = self.state();
        let mut open = OpenByProtocol {
            http1: state.detached,
            unknown: state.untracked,
            ..OpenByProtocol::default()
        };
        for slot in state.slots.values() {
            match slot.http2 {
                Some(false) => open.http1 += 1,
                Some(true) => open.http2 += 1,
                None => open.unknown += 1,
            }
        }
        open
    }

    /// Marks connection `key` busy until the guard is dropped.
    pub fn busy(self: &Arc<Self>, key: u64) -> Option<Busy> {
        self.mark_busy(key, None)
    }

    /// Marks connection `key` busy, and records whether its requests are HTTP/2 (for metrics), under
    /// one lock.
    fn mark_busy(self: &Arc<Self>, key: u64, http2: Option<bool>) -> Option<Busy> {
        let mut state = self.state();
        let state = &mut *state;
        let slot = state.slots.get_mut(&key)?;
        if let Some(http2) = http2 {
            slot.http2.get_or_insert(http2);
        }
        if slot.is_idle() {
            state.idle_now = state.idle_now.saturating_sub(1);
        }
        slot.busy += 1;
        Some(Busy {
            connections: self.clone(),
            key,
        })
    }

    /// Closes every connection idle for `idle_timeout` by `now`; returns when the next one is due.
    fn close_expired(&self, now: Instant) -> Option<Instant> {
        let mut state = self.state();
        let idle_timeout = self.idle_timeout.get();
        while let Some(key) = state.pop_idle(|since| since + idle_timeout <= now) {
            tracing::debug!("idle connection closed after request_timeout");
            state.close(key);
        }
        // Give back what a flood of connections grew.
        if state.idle.capacity() > 1024 && state.idle.len() < state.idle.capacity() / 4 {
            let keep = state.idle.len() * 2;
            state.idle.shrink_to(keep);
        }
        if state.slots.capacity() > 1024 && state.slots.len() < state.slots.capacity() / 4 {
            let keep = state.slots.len() * 2;
            state.slots.shrink_to(keep);
        }
        // The front is current now (stale entries were dropped on the way).
        state.idle.front().map(|e| e.since + idle_timeout)
    }

    /// The one task that closes expired idle connections, started with the first connection (on
    /// pingora's runtime, which then exists).
    fn start_sweeper(self: &Arc<Self>) {
        self.sweeper.call_once(|| {
            let connections = self.clone();
            tokio::spawn(async move {
                loop {
                    // The queue is in idle order, so nothing queued later is due before its front.
                    match connections.close_expired(Instant::now()) {
                        Some(due) => tokio::time::sleep_until(due).await,
                        None => connections.wake_sweeper.notified().await,
                    }
                }
            });
        });
    }
}

/// A connection's place, held by its task in [`Bounded`]; dropping it lets go of the connection
/// (which its streams may keep: they are counted until they end).
pub struct Attached {
    connections: Arc<Connections>,
    key: Option<u64>,
    closer: Arc<Notify>,
}

impl Attached {
    /// Resolves when the connection is to be closed.
    pub async fn closed(&self) {
        self.closer.notified().await;
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let mut state = self.connections.state();
        let Some(key) = self.key else {
            state.untracked = state.untracked.saturating_sub(1);
            return;
        };
        if let Some(busy) = state.slots.get(&key).map(|slot| slot.busy) {
            state.detached += busy as usize;
            state.remove(key);
        }
    }
}

/// A request in progress or a live stream on a connection; the connection becomes idle when the
/// last one is dropped (or, when its task has let go, is no longer counted).
pub struct Busy {
    connections: Arc<Connections>,
    key: u64,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = self.connections.state();
        let Some(slot) = state.slots.get_mut(&self.key) else {
            // The connection's task has let go: this was an HTTP/1.1 stream, whose task closes the
            // socket next, or a stream of an h2 connection that has already ended. (Cookies are
            // never reused, so no other connection can have taken the key meanwhile.)
            state.detached = state.detached.saturating_sub(1);
            return;
        };
        slot.busy = slot.busy.saturating_sub(1);
        if slot.busy == 0 && !slot.closing && state.start_idle(self.key) {
            self.connections.wake_sweeper.notify_one();
        }
    }
}

/// A pingora app whose every connection is admitted under [`Connections`] and dropped when told so.
pub struct Bounded<A> {
    app: Arc<A>,
    connections: Arc<Connections>,
}

impl<A> Bounded<A> {
    pub fn new(app: Arc<A>, connections: Arc<Connections>) -> Self {
        Self { app, connections }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Bounded<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.connections.start_sweeper();
        let key = stream
            .get_socket_digest()
            .and_then(|d| d.socket_cookie().ok())
            .filter(|cookie| *cookie != 0);
        // Refused: returning drops `stream`, which closes it.
        let attached = self.connections.admit(key).ok()?;
        // Everything pingora does with the connection, from the h2c preface peek to the last
        // HTTP/1.1 keep-alive request or the end of the h2 accept loop, runs in this future: dropping
        // it closes the connection. It is only dropped while the connection is idle, so no stream
        // is cut (an h2 stream needs its connection's driver, pingora's accept loop in here).
        tokio::select! {
            biased;
            () = attached.closed() => None,
            reuse = self.app.process_new(stream, shutdown) => reuse,
        }
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(10);

    /// The counters agree with the slots.
    fn consistent(connections: &Connections) {
        let state = connections.state();
        let idle = state.slots.values().filter(|s| s.is_idle()).count();
        let closing = state.slots.values().filter(|s| s.closing).count();
        assert_eq!(
            (state.idle_now, state.closing),
            (idle, closing),
            "idle and closing counts"
        );
        let current = state
            .idle
            .iter()
            .filter(|e| state.is_idle(e.key, e.seq))
            .count();
        assert_eq!(current, idle, "one current queue entry per idle connection");
    }

    /// Whether `attached` has been told to close, without waiting.
    async fn told_to_close(attached: &Attached) -> bool {
        tokio::time::timeout(Duration::ZERO, attached.closed())
            .await
            .is_ok()
    }

    #[test]
    fn the_budget_leaves_room_for_sluice_itself() {
        assert_eq!(budget(20_000), 20_000 - 64 - 256 - 312);
        assert_eq!(budget(1024), 1024 - 64 - 256 - 16);
        assert_eq!(budget(256), MIN_BUDGET);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_after_the_timeout_and_a_busy_one_is_not() {
        let connections = Connections::new(10, TIMEOUT);
        connections.start_sweeper();
        let idle = connections.admit(Some(1)).expect("admitted");
        let busy_conn = connections.admit(Some(2)).expect("admitted");
        let busy = connections.busy(2).expect("tracked");
        tokio::time::sleep(TIMEOUT - Duration::from_millis(1)).await;
        assert!(!told_to_close(&idle).await, "closed early");
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(told_to_close(&idle).await, "idle connection left open");
        consistent(&connections);
        tokio::time::sleep(TIMEOUT * 3).await;
        assert!(!told_to_close(&busy_conn).await, "busy connection closed");

        // Its last request ended: the clock starts then.
        drop(busy);
        tokio::time::sleep(TIMEOUT - Duration::from_millis(1)).await;
        assert!(!told_to_close(&busy_conn).await, "closed early");
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(told_to_close(&busy_conn).await);

        consistent(&connections);
        drop((idle, busy_conn));
        assert_eq!(connections.open(), 0);
        consistent(&connections);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_budget_closes_the_longest_idle_or_refuses() {
        let connections = Connections::new(3, TIMEOUT);
        let first = connections.admit(Some(1)).expect("admitted");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let second = connections.admit(Some(2)).expect("admitted");
        let third = connections.admit(Some(3)).expect("admitted");
        // The first turns busy and idle again: now the second has been idle the longest.
        drop(connections.busy(1));
        let fourth = connections.admit(Some(4)).expect("made room");
        assert!(told_to_close(&second).await);
        assert!(!told_to_close(&first).await && !told_to_close(&third).await);
        consistent(&connections);
        drop(second);
        consistent(&connections);

        let busy = [1, 3, 4].map(|key| connections.busy(key).expect("tracked"));
        assert_eq!(connections.admit(Some(5)).err(), Some(Full));
        assert_eq!(connections.open(), 3);
        consistent(&connections);
        drop((first, third, fourth));
        // Each is counted while its busy guard lives (an HTTP/1.1 stream owns the socket then),
        // without a slot of its own.
        assert_eq!(connections.open(), 3);
        assert!(connections.state().slots.is_empty());
        assert_eq!(connections.admit(Some(5)).err(), Some(Full));
        drop(busy);
        assert_eq!(connections.open(), 0);
        consistent(&connections);
    }

    #[tokio::test(start_paused = true)]
    async fn connections_without_a_cookie_are_counted_but_never_taken_for_idle() {
        let connections = Connections::new(1, TIMEOUT);
        let untracked = connections.admit(None).expect("admitted");
        assert_eq!(connections.admit(Some(1)).err(), Some(Full));
        drop(untracked);
        assert!(connections.admit(Some(1)).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_queue_stays_near_the_idle_connections_not_the_streams() {
        let connections = Connections::new(20_000, TIMEOUT);
        // Like HTTP/1.1 streams: admitted idle, then busy for good, the task letting go.
        let mut streams = Vec::new();
        for key in 0..10_000 {
            let attached = connections.admit(Some(key)).expect("admitted");
            streams.push(connections.busy(key).expect("tracked"));
            drop(attached);
        }
        // Like an h2 connection whose streams come and go.
        let _h2 = connections.admit(Some(10_000)).expect("admitted");
        for _ in 0..10_000 {
            drop(connections.busy(10_000));
        }
        consistent(&connections);
        let queued = connections.state().idle.len();
        assert!(
            queued <= 2 + 64 + 1,
            "{queued} queued for one idle connection"
        );
        drop(streams);
        assert_eq!(connections.open(), 1);
        consistent(&connections);
    }
}
