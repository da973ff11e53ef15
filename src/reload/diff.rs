//! What a new configuration changes against the running one, decided from the two configurations
//! alone (pure): which brokers and routes carry on, which end, what needs an upgrade.

use crate::auth::KeyId;
use crate::config::{Config, Route};
use crate::simulator::Simulator;

/// The changes a reload makes.
#[derive(Debug, PartialEq, Eq)]
pub struct Diff {
    /// For each broker of the new configuration: the running broker it equals (its bridge carries
    /// on), or `None` (a new bridge connects).
    pub brokers: Vec<Option<usize>>,
    /// For each route of the new configuration: the running route it continues (its topics, rings
    /// and open streams carry on), or `None` (new topics; see [`continues`]).
    pub routes: Vec<Option<usize>>,
    /// The running routes no new route continues: their streams end.
    pub ended: Vec<usize>,
    /// The keys tokens are verified with from now on, and those that went (their streams end).
    pub keys: Vec<KeyId>,
    pub keys_gone: Vec<KeyId>,
    /// The TLS certificate changed (new handshakes get the new one).
    pub certificate: bool,
    /// The simulator stops, starts or restarts with new settings.
    pub simulator: bool,
}

/// Compares the running configuration with a new one.
pub fn diff(running: &Config, new: &Config) -> Diff {
    let brokers = new
        .brokers
        .iter()
        .map(|b| running.brokers.iter().position(|r| r == b))
        .collect();
    let routes: Vec<Option<usize>> = (0..new.routes.len())
        .map(|j| {
            let path = new.routes[j].path.as_str();
            let i = running
                .routes
                .iter()
                .position(|r| r.path.as_str() == path)?;
            continues(running, i, new, j).then_some(i)
        })
        .collect();
    let ended = (0..running.routes.len())
        .filter(|i| !routes.contains(&Some(*i)))
        .collect();
    let keys = key_ids(new);
    let keys_gone = key_ids(running)
        .into_iter()
        .filter(|k| !keys.contains(k))
        .collect();
    let certificate = match (&running.server.tls, &new.server.tls) {
        (Some(a), Some(b)) => a.certified.cert != b.certified.cert,
        _ => false,
    };
    Diff {
        brokers,
        routes,
        ended,
        keys,
        keys_gone,
        certificate,
        simulator: !same_simulator(running, new),
    }
}

/// Whether route `j` of `new` carries on route `i` of `running`, its streams untouched: it is
/// defined the same way, on a broker defined the same way (whatever the brokers' places in their
/// lists), and no route that now comes before it takes request paths it answered (it is not newly
/// shadowed: every earlier route whose path can match the same request was earlier before too).
/// Its own place may change. `[auth]` is not part of it: a stream's token is checked against the
/// new keys on its own (see [`Diff::keys_gone`]).
pub fn continues(running: &Config, i: usize, new: &Config, j: usize) -> bool {
    let (Some(old), Some(route)) = (running.routes.get(i), new.routes.get(j)) else {
        return false;
    };
    let same_broker = running.brokers.get(old.broker) == new.brokers.get(route.broker);
    let same_definition = Route {
        broker: route.broker,
        ..old.clone()
    } == *route;
    let was_before = |path: &str| running.routes[..i].iter().any(|r| r.path.as_str() == path);
    let newly_shadowed = new.routes[..j]
        .iter()
        .any(|r| r.path.overlaps(&route.path) && !was_before(r.path.as_str()));
    same_broker && same_definition && !newly_shadowed
}

/// The keys tokens are verified with.
fn key_ids(config: &Config) -> Vec<KeyId> {
    config.auth.iter().flat_map(|auth| auth.key_ids()).collect()
}

/// Whether the simulator runs the same way: the same settings on a broker defined the same way.
fn same_simulator(running: &Config, new: &Config) -> bool {
    match (&running.simulator, &new.simulator) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            Simulator {
                broker: b.broker,
                ..a.clone()
            } == *b
                && running.brokers.get(a.broker) == new.brokers.get(b.broker)
        }
        _ => false,
    }
}

/// The configuration that can run now: `new`, with the listeners that are running (pingora opens
/// its listening sockets once, at start), and what of `new` needs an upgrade to apply. A TLS
/// section keeps serving its (possibly new) certificate on the running TLS addresses.
pub fn runnable(running: &Config, mut new: Config) -> (Config, Vec<&'static str>) {
    let mut upgrade = Vec::new();
    if new.admin != running.admin {
        upgrade.push("[admin] listen");
        new.admin.clone_from(&running.admin);
    }
    if new.log_format != running.log_format {
        upgrade.push("[log] format");
        new.log_format = running.log_format;
    }
    if new.server.upgrade_socket != running.server.upgrade_socket {
        upgrade.push("upgrade_socket");
        new.server
            .upgrade_socket
            .clone_from(&running.server.upgrade_socket);
    }
    let running = &running.server;
    if new.server.listen != running.listen {
        upgrade.push("listen addresses");
        new.server.listen.clone_from(&running.listen);
    }
    new.server.tls = match (&running.tls, new.server.tls.take()) {
        (None, None) => None,
        (None, Some(_)) => {
            upgrade.push("adding [server.tls]");
            None
        }
        (Some(old), None) => {
            upgrade.push("removing [server.tls]");
            Some(old.clone())
        }
        (Some(old), Some(mut tls)) => {
            if tls.listen != old.listen {
                upgrade.push("TLS listen addresses");
                tls.listen.clone_from(&old.listen);
            }
            Some(tls)
        }
    };
    (new, upgrade)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use std::path::Path;

    const BROKERS: &str = "[brokers.m]\ntype = \"memory\"\n\n[brokers.n]\ntype = \"memory\"\n";

    /// A configuration of `brokers` and then routes, each `(path, broker, extra keys)`, on topic
    /// `t/<path's last segment>`.
    fn config(brokers: &str, routes: &[(&str, &str, &str)]) -> Config {
        let mut text = format!("[server]\nlisten = \"127.0.0.1:9\"\n{brokers}");
        for (path, broker, extra) in routes {
            let last = path.rsplit('/').next().unwrap_or_default();
            text.push_str(&format!(
                "\n[[routes]]\npath = \"{path}\"\nbroker = \"{broker}\"\ntopic = \"t/{last}\"\n{extra}\n"
            ));
        }
        parse("test.toml", &text, &fixtures()).expect("a valid configuration")
    }

    /// Where key files in test texts are read from.
    fn fixtures() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
    }

    #[test]
    fn streams_of_a_key_that_went_end_and_those_of_a_kept_key_stay() {
        let auth = |extra: &str| {
            let key = "[auth]\njwt_public_key = \"jwt-rs256.pub\"\n";
            config(
                &format!("{key}{extra}{BROKERS}"),
                &[("/a", "m", "auth = true")],
            )
        };
        let running = auth("");
        let same = super::diff(&running, &auth("cookie = \"other\"\n"));
        assert_eq!(
            same.routes,
            [Some(0)],
            "an auth route is not ended by [auth]"
        );
        assert_eq!(same.keys, key_ids(&running));
        assert!(
            same.keys_gone.is_empty(),
            "the cookie name verifies nothing"
        );

        let audience = super::diff(&running, &auth("audience = \"x\"\n"));
        assert_eq!(
            audience.keys_gone,
            key_ids(&running),
            "tokens need the audience now"
        );
        assert_eq!(audience.keys.len(), 1);
        assert_ne!(audience.keys, key_ids(&running));

        // Rotation: the new key first, both accepted, then the old one taken away.
        let keys = |files: &str| {
            let key = format!("[auth]\njwt_public_key = [{files}]\n");
            config(&format!("{key}{BROKERS}"), &[("/a", "m", "auth = true")])
        };
        let both = keys("\"jwt-rs256-pkcs1.pub\", \"jwt-rs256.pub\"");
        let overlap = super::diff(&running, &both);
        assert!(overlap.keys_gone.is_empty(), "the old key still verifies");
        assert_eq!(overlap.keys[1], key_ids(&running)[0]);
        let rotated = super::diff(&both, &keys("\"jwt-rs256-pkcs1.pub\""));
        assert_eq!(rotated.keys_gone, key_ids(&running));
        assert_eq!(rotated.keys, key_ids(&both)[..1]);
        assert_eq!(rotated.routes, [Some(0)]);
    }

    #[test]
    fn the_simulator_restarts_when_its_settings_or_broker_change() {
        let sim = |brokers: &str, devices: usize| {
            let text = format!("{brokers}[simulator]\nbroker = \"n\"\ndevices = {devices}\n");
            config(&text, &[("/a", "n", "")])
        };
        let running = sim(BROKERS, 2);
        assert!(!super::diff(&running, &sim(BROKERS, 2)).simulator);
        assert!(super::diff(&running, &sim(BROKERS, 3)).simulator);
        // Its broker moves to another index, defined the same: nothing to restart.
        let shifted = format!("[brokers.a]\ntype = \"memory\"\n{BROKERS}");
        assert!(!super::diff(&running, &sim(&shifted, 2)).simulator);
        assert!(super::diff(&running, &config(BROKERS, &[("/a", "n", "")])).simulator);
    }

    #[test]
    fn unchanged_routes_carry_on_wherever_they_move_and_changed_ones_end() {
        let running = config(
            BROKERS,
            &[("/a", "m", ""), ("/b", "m", "buffer = 8"), ("/c", "m", "")],
        );
        // /new is inserted first, /b changes, /c is removed, /a moves to the end.
        let new = config(
            BROKERS,
            &[
                ("/new", "m", ""),
                ("/b", "m", "buffer = 9"),
                ("/a", "m", ""),
            ],
        );
        let diff = diff(&running, &new);
        assert_eq!(diff.routes, [None, None, Some(0)]);
        assert_eq!(diff.ended, [1, 2]);
        assert_eq!(diff.brokers, [Some(0), Some(1)]);
        assert!(!diff.certificate && !diff.simulator);
        assert!(diff.keys.is_empty() && diff.keys_gone.is_empty());
    }

    #[test]
    fn a_route_depends_on_its_brokers_definition_not_its_index() {
        let running = config(BROKERS, &[("/a", "n", ""), ("/b", "m", "")]);
        // A broker named before both shifts their indices; n's definition is unchanged.
        let shifted = config(
            &format!("[brokers.a]\ntype = \"memory\"\n{BROKERS}"),
            &[("/a", "n", ""), ("/b", "m", "")],
        );
        let diff = super::diff(&running, &shifted);
        assert_eq!(diff.brokers, [None, Some(0), Some(1)]);
        assert_eq!(diff.routes, [Some(0), Some(1)]);
        assert!(diff.ended.is_empty());

        // A route moved to another broker does not carry on, even at the same index.
        let moved = config(BROKERS, &[("/a", "m", ""), ("/b", "m", "")]);
        assert_eq!(super::diff(&running, &moved).routes, [None, Some(1)]);

        // A broker whose URL changes is a new broker: its routes end and start again on it.
        let nats = |url: &str| format!("[brokers.m]\ntype = \"nats\"\nurl = \"{url}\"\n");
        let on_nats = config(&nats("nats://127.0.0.1:4222"), &[("/a", "m", "")]);
        let elsewhere = config(&nats("nats://127.0.0.1:4223"), &[("/a", "m", "")]);
        let diff = super::diff(&on_nats, &elsewhere);
        assert_eq!(
            (diff.brokers, diff.routes, diff.ended),
            (vec![None], vec![None], vec![0])
        );
    }

    #[test]
    fn a_route_newly_shadowed_by_an_earlier_one_ends() {
        let running = config(
            BROKERS,
            &[("/rooms/lobby", "m", ""), ("/halls/{x}", "m", "")],
        );
        // /rooms/{room} now comes first: it takes /rooms/lobby's requests, so that route's streams
        // end (their clients reconnect to whatever answers now). /halls/{x} is untouched.
        let new = config(
            BROKERS,
            &[
                ("/rooms/{room}", "m", ""),
                ("/rooms/lobby", "m", ""),
                ("/halls/{x}", "m", ""),
            ],
        );
        assert_eq!(diff(&running, &new).routes, [None, None, Some(1)]);

        // An earlier route that was earlier before, changed or not, shadows nothing new.
        let running = config(
            BROKERS,
            &[("/rooms/{room}", "m", ""), ("/rooms/lobby", "m", "")],
        );
        let new = config(
            BROKERS,
            &[
                ("/rooms/{room}", "m", "buffer = 3"),
                ("/rooms/lobby", "m", ""),
            ],
        );
        assert_eq!(diff(&running, &new).routes, [None, Some(1)]);

        // Nor does a route that went: the later one answers more paths, its open streams are the same.
        let new = config(BROKERS, &[("/rooms/lobby", "m", "")]);
        assert_eq!(diff(&running, &new).routes, [Some(1)]);

        // Swapping two overlapping routes shadows the one that moved back.
        let new = config(
            BROKERS,
            &[("/rooms/lobby", "m", ""), ("/rooms/{room}", "m", "")],
        );
        assert_eq!(diff(&running, &new).routes, [Some(1), None]);
    }

    #[test]
    fn listeners_stay_until_an_upgrade_and_certificates_apply() {
        let running = config(BROKERS, &[("/a", "m", "")]);
        let mut new = running.clone();
        new.server.listen = vec!["127.0.0.1:10".parse().expect("addr")];
        new.server.heartbeat = std::time::Duration::from_secs(1);
        let (runnable, upgrade) = runnable(&running, new);
        assert_eq!(upgrade, ["listen addresses"]);
        assert_eq!(runnable.server.listen, running.server.listen);
        assert_eq!(runnable.server.heartbeat, std::time::Duration::from_secs(1));
        let (unchanged, upgrade) = super::runnable(&running, running.clone());
        assert!(upgrade.is_empty());
        assert_eq!(unchanged.server, running.server);
    }
}
