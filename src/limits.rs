//! Connection limits for streams: how many client connections may hold open streams, in all and per
//! client IP, and how much memory the process may use before it refuses new work. Past a limit a new
//! stream is answered `503` with `retry-after`, never a crash.
//!
//! A connection is identified by its client address (IP and port); an HTTP/2 connection with many
//! streams counts once.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// The limits and what is open now. A configuration reload sets new limits ([`Limits::set`]):
/// they apply to the next stream; streams open past a lowered limit stay.
pub struct Limits {
    max_connections: AtomicUsize,
    /// 0 is no limit.
    max_per_ip: AtomicUsize,
    open: Mutex<Open>,
}

/// Kept small for the common case: an HTTP/1.1 stream is its own connection and only counts; only
/// multiplexed (HTTP/2) connections are tracked by address, and IPs only when a per-IP limit is set.
#[derive(Default)]
struct Open {
    connections: usize,
    /// Streams open on each multiplexed connection, and whether it is counted by IP.
    streams_by_multiplexed: HashMap<SocketAddr, (usize, bool)>,
    connections_by_ip: HashMap<IpAddr, usize>,
}

/// Which limit refused a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Connections,
    ConnectionsPerIp,
}

/// One open stream's place; dropping it frees it.
pub struct Admitted {
    limits: Arc<Limits>,
    connection: SocketAddr,
    multiplexed: bool,
    /// Counted by IP (a per-IP limit was set when its connection was admitted); multiplexed
    /// connections keep this in `Open`.
    by_ip: bool,
}

impl Limits {
    pub fn new(max_connections: usize, max_per_ip: usize) -> Self {
        Self {
            max_connections: AtomicUsize::new(max_connections),
            max_per_ip: AtomicUsize::new(max_per_ip),
            open: Mutex::new(Open::default()),
        }
    }

    /// New limits, for the streams admitted from now on.
    pub fn set(&self, max_connections: usize, max_per_ip: usize) {
        self.max_connections
            .store(max_connections, Ordering::Relaxed);
        self.max_per_ip.store(max_per_ip, Ordering::Relaxed);
    }

    fn open(&self) -> MutexGuard<'_, Open> {
        // Each update below is complete before the lock is released.
        sluice_bridge::lock(&self.open)
    }

    /// Admits one more stream on `connection` (`multiplexed`: an HTTP/2 connection, which may carry
    /// others), or says which limit it would break.
    pub fn admit(
        self: &Arc<Self>,
        connection: SocketAddr,
        multiplexed: bool,
    ) -> Result<Admitted, Refused> {
        let (max_connections, max_per_ip) = (
            self.max_connections.load(Ordering::Relaxed),
            self.max_per_ip.load(Ordering::Relaxed),
        );
        let mut open = self.open();
        let new_connection = !multiplexed || !open.streams_by_multiplexed.contains_key(&connection);
        let mut by_ip = false;
        if new_connection {
            if open.connections >= max_connections {
                return Err(Refused::Connections);
            }
            if max_per_ip > 0 {
                let per_ip = open.connections_by_ip.entry(connection.ip()).or_default();
                if *per_ip >= max_per_ip {
                    return Err(Refused::ConnectionsPerIp);
                }
                *per_ip += 1;
                by_ip = true;
            }
            open.connections += 1;
        }
        if multiplexed {
            let entry = open
                .streams_by_multiplexed
                .entry(connection)
                .or_insert((0, by_ip));
            entry.0 += 1;
        }
        Ok(Admitted {
            limits: self.clone(),
            connection,
            multiplexed,
            by_ip,
        })
    }

    /// Connections holding open streams now.
    pub fn connections(&self) -> usize {
        self.open().connections
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.limits.open();
        let mut by_ip = self.by_ip;
        if self.multiplexed {
            let Some((streams, counted)) = open.streams_by_multiplexed.get_mut(&self.connection)
            else {
                return;
            };
            *streams -= 1;
            if *streams > 0 {
                return;
            }
            by_ip = *counted;
            open.streams_by_multiplexed.remove(&self.connection);
        }
        open.connections -= 1;
        let ip = self.connection.ip();
        if !by_ip {
            return;
        }
        if let Some(n) = open.connections_by_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                open.connections_by_ip.remove(&ip);
            }
        }
    }
}

/// `[server] max_memory`: past it, new streams and publishes are refused (`503`), so a memory limit
/// is met with refusals rather than an allocation failure, which aborts the process with every stream.
///
/// Memory is the process's resident set (what a cgroup's `memory.max` charges it for, besides the
/// kernel's socket buffers), read from /proc at most every [`MemoryGuard::REFRESH_MS`]. Freed memory
/// is not always returned to the system at once, so refusals may go on a while after the load fell.
pub struct MemoryGuard {
    /// The limit in bytes; 0: none. A reload may change it ([`MemoryGuard::set_limit`]).
    limit: AtomicU64,
    started: Instant,
    /// The last reading, and when it was taken (milliseconds since `started`, plus one; 0: never).
    rss: AtomicU64,
    read_at: AtomicU64,
}

impl MemoryGuard {
    const REFRESH_MS: u64 = 100;

    pub fn new(limit: Option<u64>) -> Self {
        warn_near_cgroup_limit(limit);
        Self {
            limit: AtomicU64::new(limit.unwrap_or(0)),
            started: Instant::now(),
            rss: AtomicU64::new(0),
            read_at: AtomicU64::new(0),
        }
    }

    /// A new `max_memory` (`None`: no bound), for the requests from now on.
    pub fn set_limit(&self, limit: Option<u64>) {
        if limit.unwrap_or(0) != self.limit.load(Ordering::Relaxed) {
            warn_near_cgroup_limit(limit);
        }
        self.limit.store(limit.unwrap_or(0), Ordering::Relaxed);
    }

    /// True when the process uses more memory than `max_memory`.
    pub fn over(&self) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        if limit == 0 {
            return false;
        }
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let read_at = self.read_at.load(Ordering::Relaxed);
        if read_at == 0 || now.saturating_sub(read_at) >= Self::REFRESH_MS {
            if let Some(rss) = resident_bytes() {
                self.rss.store(rss, Ordering::Relaxed);
            }
            self.read_at.store(now, Ordering::Relaxed);
        }
        self.rss.load(Ordering::Relaxed) > limit
    }
}

/// Warns when `limit` leaves the kernel too little room below the cgroup's own limit.
fn warn_near_cgroup_limit(limit: Option<u64>) {
    if let (Some(limit), Some(cgroup)) = (limit, cgroup_memory_max()) {
        if limit > cgroup / 10 * 9 {
            tracing::warn!(
                max_memory = limit,
                cgroup_memory_max = cgroup,
                "max_memory is close to or above the cgroup's memory.max: the kernel may kill \
                 sluice before it refuses anything (leave room for socket buffers)"
            );
        }
    }
}

/// The process's resident memory in bytes, from /proc/self/status.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The cgroup (v2) memory limit of this process, if it has one.
fn cgroup_memory_max() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let max = std::fs::read_to_string(format!("/sys/fs/cgroup{}/memory.max", path.trim())).ok()?;
    max.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_guard_reads_this_process() {
        assert!(!MemoryGuard::new(None).over());
        assert!(MemoryGuard::new(Some(1)).over(), "any process uses a byte");
        assert!(!MemoryGuard::new(Some(u64::MAX)).over());
        assert!(resident_bytes().is_some_and(|b| b > 1024 * 1024));
        let guard = MemoryGuard::new(None);
        guard.set_limit(Some(1));
        assert!(guard.over(), "a reload's new limit applies");
        guard.set_limit(None);
        assert!(!guard.over());
    }

    #[test]
    fn new_limits_apply_to_the_next_stream_and_open_ones_are_freed_as_counted() {
        let limits = Arc::new(Limits::new(10, 0));
        // Admitted with no per-IP limit, so not counted by IP: freeing it later frees no IP's place.
        let before = limits.admit(addr([10, 0, 0, 1], 1), true).expect("h2");
        limits.set(10, 1);
        let after = limits
            .admit(addr([10, 0, 0, 1], 2), false)
            .expect("first by IP");
        assert_eq!(
            limits.admit(addr([10, 0, 0, 1], 3), false).err(),
            Some(Refused::ConnectionsPerIp)
        );
        drop(before);
        assert_eq!(
            limits.admit(addr([10, 0, 0, 1], 3), false).err(),
            Some(Refused::ConnectionsPerIp),
            "the stream admitted before the limit did not hold the IP's place"
        );
        drop(after);
        assert!(limits.admit(addr([10, 0, 0, 1], 3), false).is_ok());
        limits.set(0, 0);
        assert_eq!(
            limits.admit(addr([10, 0, 0, 2], 1), false).err(),
            Some(Refused::Connections)
        );
    }

    fn addr(ip: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::from((ip, port))
    }

    #[test]
    fn counts_connections_not_streams_and_frees_them() {
        let limits = Arc::new(Limits::new(2, 1));
        let a1 = limits.admit(addr([10, 0, 0, 1], 1), true).expect("first");
        let a2 = limits
            .admit(addr([10, 0, 0, 1], 1), true)
            .expect("same h2 connection");
        assert_eq!(
            limits.admit(addr([10, 0, 0, 1], 2), false).err(),
            Some(Refused::ConnectionsPerIp)
        );
        let b = limits
            .admit(addr([10, 0, 0, 2], 1), false)
            .expect("other ip");
        assert_eq!(
            limits.admit(addr([10, 0, 0, 3], 1), false).err(),
            Some(Refused::Connections)
        );
        drop((a1, a2));
        assert_eq!(limits.connections(), 1);
        assert!(limits.admit(addr([10, 0, 0, 1], 2), false).is_ok());
        drop(b);
        assert_eq!(limits.connections(), 0);
    }
}
