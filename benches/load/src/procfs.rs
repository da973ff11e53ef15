//! CPU time, resident memory and TCP connections of server processes, from /proc.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;

/// Clock ticks per second of /proc/PID/stat times (USER_HZ; 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// The PID and every descendant of it (nginx's workers are children of its master).
pub fn family(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let parent = all[i];
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(child) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                if parent_of(child) == Some(parent) && !all.contains(&child) {
                    all.push(child);
                }
            }
        }
        i += 1;
    }
    all
}

fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?;
    // The command name is in parentheses and may hold spaces: split after the last ')'.
    let after = &stat[stat.rfind(')')? + 2..];
    Some(after.split(' ').map(str::to_owned).collect())
}

fn parent_of(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// User + system CPU seconds of the processes.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|pid| {
            let f = stat_fields(*pid)?;
            // After the command: state(0) ppid(1) ... utime(11) stime(12).
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / TICKS_PER_SECOND)
        })
        .sum()
}

/// Resident set size in KiB, summed over the processes.
pub fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))?
                .trim()
                .trim_end_matches(" kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// The peers of the ESTABLISHED IPv4 TCP connections whose local address is `local` (the
/// connections a server listening there has open), from /proc/net/tcp. The address counts, not just
/// the port: a client socket on another loopback address may have the same port as its local one.
/// /proc/net/tcp is not a snapshot (a socket can be listed twice while others come and go): each
/// peer is counted once.
pub fn established_peers(local: SocketAddrV4) -> BTreeSet<SocketAddrV4> {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return BTreeSet::new();
    };
    // `sl local_address rem_address st ...`, addresses as HEXIP:HEXPORT, state 01 = ESTABLISHED.
    let address = |field: &str| {
        let (ip, port) = field.split_once(':')?;
        // The kernel prints the address's four bytes as one native-endian number.
        let ip = u32::from_str_radix(ip, 16).ok()?.to_ne_bytes();
        Some(SocketAddrV4::new(
            Ipv4Addr::from(ip),
            u16::from_str_radix(port, 16).ok()?,
        ))
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace().skip(1);
            let at = address(fields.next()?)?;
            let peer = address(fields.next()?)?;
            (at == local && fields.next()? == "01").then_some(peer)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::established_peers;
    use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};

    #[test]
    fn counts_the_connections_to_an_address_by_peer() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let local = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        assert!(established_peers(local).is_empty());
        let client = TcpStream::connect(local).expect("connect");
        let _accepted = listener.accept().expect("accept");
        let peer = match client.local_addr().expect("addr") {
            std::net::SocketAddr::V4(peer) => peer,
            other => panic!("not IPv4: {other}"),
        };
        assert_eq!(
            established_peers(local).into_iter().collect::<Vec<_>>(),
            [peer]
        );
        // The same port on another loopback address is another socket.
        let other = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 2), port);
        assert!(established_peers(other).is_empty());
    }
}
