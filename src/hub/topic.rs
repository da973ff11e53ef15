//! One topic: a broker subscription of one route, the streams on it, and the fan-out of each message
//! to them: encoded once, outside the lock that joins and resumes take, then queued as the same bytes
//! for every live stream (a refcount bump, no copy) and kept in the replay ring.

use super::window::SharedReadBack;
use super::RouteTopics;
use crate::auth::KeyId;
use crate::replay::{self, Retention, Ring};
use crate::sse::{self, GapReason};
use crate::stream::{OverflowStats, StreamQueue};
use bytes::Bytes;
use sluice_bridge::{Interruption, Message, Subscription};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub(super) use sluice_bridge::lock;

/// A topic is one route's subscription to one filter: topics of different routes are never shared,
/// so a topic has one event format, one retention and one replay budget. `route` is the route's id
/// ([`RouteTopics::route`]), which a reload that leaves the route unchanged keeps.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TopicKey {
    pub route: u64,
    pub filter: Box<str>,
}

pub(super) struct Topic {
    pub(super) key: TopicKey,
    pub(super) spec: Arc<RouteTopics>,
    /// This topic's life in this process, part of its memory replay ids.
    pub(super) instance: u64,
    /// Serializes fan-outs (a memory broker publishes from many tasks) and numbers them: the last
    /// sequence given (replay) or seen (JetStream).
    sequence: Mutex<u64>,
    /// JetStream: the position the live consumer started after.
    pub(super) started_after: AtomicU64,
    pub(super) members: Mutex<Members>,
    /// The replay ring (replay routes).
    pub(super) ring: Option<Arc<Mutex<Ring>>>,
    pub(super) subscription: Mutex<Option<Subscription>>,
    /// Set once the topic has left the registry; a subscription that arrives later is dropped.
    pub(super) retired: AtomicBool,
    /// Set (and `on_established` notified) once the broker subscription is live.
    established: AtomicBool,
    /// JetStream: the read-back that concurrent resumes share (see [`super::window`]).
    pub(super) read_back: SharedReadBack,
    /// JetStream: counts the times the stream was replaced, so a read-back of an older one is not
    /// served after it.
    pub(super) replaced: AtomicU64,
    pub(super) on_established: tokio::sync::Notify,
    stats: Arc<OverflowStats>,
}

#[derive(Default)]
pub(super) struct Members {
    pub(super) next_id: u64,
    pub(super) by_id: HashMap<u64, Member>,
    /// The sequence of the last event queued to live streams (JetStream: resuming streams switch to
    /// live once they have read up to it).
    pub(super) head: u64,
    /// The current value of each concrete topic (routes with `retained = true`), encoded as sent:
    /// the broker's retained message, replaced by every later message on that topic.
    pub(super) current: HashMap<Arc<str>, Bytes>,
    /// Counts the times the topic became empty, so a linger timer knows whether it is still current.
    pub(super) emptied: u64,
}

pub(super) struct Member {
    pub(super) queue: Arc<StreamQueue>,
    pub(super) state: State,
    /// The key that verified the stream's token, so a reload that takes the key away finds it.
    pub(super) key: Option<KeyId>,
}

/// Whether a stream gets the topic's live events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    Live,
    /// Reading its backlog (see `resume`): live events reach it through the ring or the broker.
    CatchingUp,
    /// Live, but its backlog read went past the live events queued so far: skip up to this sequence.
    LiveAfter(u64),
}

impl Topic {
    pub(super) fn new(key: TopicKey, spec: Arc<RouteTopics>, stats: Arc<OverflowStats>) -> Self {
        let ring = match (&spec.retention, &spec.budget) {
            (Retention::Replay { per_topic, .. }, Some(budget)) => {
                Some(Ring::new(*per_topic, budget.clone()))
            }
            _ => None,
        };
        Self {
            key,
            spec,
            instance: replay::next_instance(),
            sequence: Mutex::new(0),
            started_after: AtomicU64::new(0),
            members: Mutex::new(Members::default()),
            ring,
            subscription: Mutex::new(None),
            retired: AtomicBool::new(false),
            established: AtomicBool::new(false),
            read_back: SharedReadBack::default(),
            replaced: AtomicU64::new(0),
            on_established: tokio::sync::Notify::new(),
            stats,
        }
    }

    /// Returns once the broker subscription is live (or the topic is gone).
    pub(super) async fn wait_established(&self) {
        loop {
            let notified = self.on_established.notified();
            tokio::pin!(notified);
            // Registered before the check, so a notification in between is not missed.
            notified.as_mut().enable();
            if self.established.load(Ordering::Acquire) || self.retired.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// A JetStream topic's live consumer starts after position `after`: everything up to it counts
    /// as already queued to live streams (resuming streams read it from the broker).
    pub(super) fn starts_after(&self, after: u64) {
        self.started_after.store(after, Ordering::Release);
        let mut sequence = lock(&self.sequence);
        let mut members = lock(&self.members);
        *sequence = (*sequence).max(after);
        members.head = members.head.max(after);
    }

    pub(super) fn mark_established(&self) {
        self.established.store(true, Ordering::Release);
        self.on_established.notify_waiters();
    }

    pub(super) fn linger(&self) -> Duration {
        // A route a reload changed or removed keeps nothing for returning clients: they come back
        // to its successor.
        if self.spec.retired.load(Ordering::Acquire) {
            return Duration::ZERO;
        }
        match self.spec.retention {
            Retention::Replay { linger, .. } => linger,
            _ => Duration::ZERO,
        }
    }

    /// Removes the topic from the registry (if it is still there) and marks it retired.
    pub(super) fn leave_registry(self: &Arc<Self>, topics: &mut HashMap<TopicKey, Arc<Topic>>) {
        if topics.get(&self.key).is_some_and(|t| Arc::ptr_eq(t, self)) {
            topics.remove(&self.key);
        }
        self.retired.store(true, Ordering::Release);
    }

    /// The SSE id of event `seq`, when the topic gives ids: sluice's own on replay and JetStream
    /// routes, else the origin's (an upstream SSE origin's `id:`), so that without sluice's replay
    /// a browser's `Last-Event-ID` means what it means to the origin.
    fn event_id(&self, seq: Option<u64>, message: &Message) -> Option<String> {
        match (&self.spec.retention, seq) {
            (Retention::Live, _) => message.id.as_deref().map(str::to_owned),
            (Retention::Replay { .. }, Some(seq)) => Some(replay::memory_id(self.instance, seq)),
            (Retention::JetStream { .. }, Some(seq)) => Some(seq.to_string()),
            (_, None) => None,
        }
    }

    /// Encodes one message as this route's streams get it; a current value (a retained message, or
    /// the value a later message leaves) has `.retained` appended to its type.
    pub(super) fn encode(&self, seq: Option<u64>, message: &Message, as_current: bool) -> Bytes {
        // The route's own event type wins; else the one the origin gave (upstream SSE).
        let name = match &self.spec.event {
            Some(event) => Some(event.render(&message.topic)),
            None => message.event.as_deref().map(str::to_owned),
        };
        let name = if as_current {
            Some(format!(
                "{}{}",
                name.as_deref().unwrap_or(sse::DEFAULT_EVENT),
                sse::RETAINED_SUFFIX
            ))
        } else {
            name
        };
        let id = self.event_id(seq.or(message.seq), message);
        if self.spec.envelope {
            let data = sse::envelope(&message.topic, &message.payload);
            return sse::encode_event_with_id(name.as_deref(), id.as_deref(), &data);
        }
        sse::encode_event_with_id(name.as_deref(), id.as_deref(), &message.payload)
    }

    /// Queues `message` for every live stream and keeps it in the ring. The frame is made before
    /// the members' lock is taken, so joins and resumes never wait for an encoding.
    pub(super) fn fan_out(&self, message: &Message) {
        if message.retained && !self.spec.retained {
            // Sent by the broker because of a (re)subscribe: only `retained` routes want it.
            return;
        }
        let mut sequence = lock(&self.sequence);
        let seq = match &self.spec.retention {
            Retention::Live => None,
            // A retained message is a topic's current value, re-sent on every (re)subscribe, not an
            // event in the topic's history: it gets no position.
            Retention::Replay { .. } if message.retained => None,
            Retention::Replay { .. } => {
                *sequence += 1;
                Some(*sequence)
            }
            Retention::JetStream { .. } => match message.seq {
                // A recreated consumer may deliver again what was already seen: skip it.
                Some(seq) if seq > *sequence => {
                    *sequence = seq;
                    Some(seq)
                }
                _ => return,
            },
        };
        let frame = self.encode(seq, message, message.retained);
        let current = match (self.spec.retained, message.retained) {
            (false, _) => None,
            (true, true) => Some(frame.clone()),
            (true, false) => Some(self.encode(seq, message, true)),
        };
        // One clock read per message, for the delivery lag of every stream it is queued to.
        let at = tokio::time::Instant::now();
        let mut guard = lock(&self.members);
        let members = &mut *guard;
        if let Some(current) = current {
            if message.retained && message.payload.is_empty() {
                // An empty retained message clears the topic's value.
                members.current.remove(&message.topic);
                return;
            }
            members.current.insert(message.topic.clone(), current);
        }
        if let (Some(ring), Some(seq)) = (&self.ring, seq) {
            lock(ring).record(seq, &message.topic, frame.clone());
        }
        if let Some(seq) = seq {
            members.head = seq;
        }
        for member in members.by_id.values_mut() {
            match member.state {
                State::Live => {}
                State::CatchingUp => continue,
                State::LiveAfter(after) => {
                    if seq.is_some_and(|seq| seq <= after) {
                        continue;
                    }
                    member.state = State::Live;
                }
            }
            // Keyed by the concrete topic: a route with `max_rate` conflates per topic.
            member
                .queue
                .push_for(&message.topic, frame.clone(), at, &self.stats);
        }
        drop(guard);
        drop(sequence);
        // Evicting takes other topics' rings: only with no lock of this topic held.
        if let (Some(_), Some(budget)) = (&self.ring, &self.spec.budget) {
            budget.enforce();
        }
    }

    /// The broker may have lost messages of this topic: every stream is told with a `gap` event. A
    /// JetStream stream that was replaced starts its sequences over.
    pub(super) fn interrupted(&self, why: Interruption) {
        let mut sequence = lock(&self.sequence);
        let mut members = lock(&self.members);
        let reason = match why {
            Interruption::StreamReplaced => {
                self.replaced.fetch_add(1, Ordering::AcqRel);
                *sequence = 0;
                members.head = 0;
                for member in members.by_id.values_mut() {
                    if let State::LiveAfter(_) = member.state {
                        member.state = State::Live;
                    }
                }
                GapReason::StreamReplaced
            }
            Interruption::LateSubscription => GapReason::LateSubscription,
            Interruption::Disconnected => GapReason::BrokerDisconnected,
        };
        tracing::info!(route = self.key.route, filter = %self.key.filter, reason = reason.as_str(), "broker interruption; telling every stream");
        let frame = sse::gap(reason, None);
        let at = tokio::time::Instant::now();
        for member in members.by_id.values() {
            member.queue.push(frame.clone(), at, &self.stats);
        }
        self.spec.metrics.gaps(reason, members.by_id.len() as u64);
    }
}
