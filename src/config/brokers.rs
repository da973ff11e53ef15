//! Validates `[brokers.NAME]` into [`Broker`]s: the type, its url and the keys of that type only
//! (an `sse` origin's own keys are checked in [`super::origin`]).

use super::raw::{OneOrMany, RawBroker};
use super::values::within;
use super::{
    ConfigError, Locator, DEFAULT_MAX_CONTROL_LINE, DEFAULT_MQTT_QOS, MAX_CONTROL_LINE_RANGE,
    MQTT_QOS_RANGE,
};
use sluice_bridge::TopicSyntax;
use std::collections::BTreeMap;

/// One `[brokers.NAME]` entry, validated.
///
/// Two brokers compare equal iff they name and reach the same server the same way (type, url and
/// that type's settings). The default MQTT `client_id` holds the process id, so it is the same for
/// every configuration this process loads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broker {
    pub name: String,
    pub kind: BrokerKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BrokerKind {
    Memory,
    Nats {
        /// The servers to connect to (one or more of a cluster); async-nats fails over between them.
        urls: Vec<String>,
        /// The server's `max_control_line`: the longest protocol line (and so subject) it takes.
        max_control_line: usize,
    },
    Mqtt {
        url: String,
        client_id: String,
        qos: u8,
    },
    /// An upstream SSE origin: each topic is a path on it.
    Sse(sluice_sse::SseSettings),
}

impl BrokerKind {
    pub fn syntax(&self) -> TopicSyntax {
        match self {
            BrokerKind::Nats { .. } => TopicSyntax::Nats,
            BrokerKind::Mqtt { .. } | BrokerKind::Memory => TopicSyntax::Mqtt,
            BrokerKind::Sse(_) => TopicSyntax::Path,
        }
    }
}

/// Every `[brokers.NAME]`, in name order (the order routes' broker indices refer to); `base`
/// resolves relative file paths.
pub(super) fn validate(
    at: &Locator,
    raw: BTreeMap<String, RawBroker>,
    base: &std::path::Path,
) -> Result<Vec<Broker>, ConfigError> {
    raw.into_iter()
        .map(|(name, broker)| {
            let kind = kind(at, &name, broker, base)?;
            Ok(Broker { name, kind })
        })
        .collect()
}

fn kind(
    at: &Locator,
    name: &str,
    raw: RawBroker,
    base: &std::path::Path,
) -> Result<BrokerKind, ConfigError> {
    // Every url of the broker: one string, or a list (NATS only).
    let urls = |scheme: &str| -> Result<Vec<String>, ConfigError> {
        let Some(url) = &raw.url else {
            return Err(at.error(
                raw.kind.span(),
                format!("broker {name:?} needs a url, e.g. \"{scheme}://127.0.0.1\""),
            ));
        };
        let list = match url.get_ref() {
            OneOrMany::One(one) => vec![one.clone()],
            OneOrMany::Many(many) => many.clone(),
        };
        if list.is_empty() {
            return Err(at.error(url.span(), "url needs at least one address"));
        }
        for (i, one) in list.iter().enumerate() {
            let host = one.strip_prefix(&format!("{scheme}://"));
            if host.is_none_or(str::is_empty) {
                let kind = raw.kind.get_ref();
                let reason = format!("a {kind} url must start with {scheme}:// and name a host");
                return Err(at.error(url.span(), reason));
            }
            if list[..i].contains(one) {
                return Err(at.error(url.span(), format!("url {one:?} is listed twice")));
            }
        }
        Ok(list)
    };
    let not_mqtt = |raw: &RawBroker| -> Result<(), ConfigError> {
        if let Some(c) = &raw.client_id {
            return Err(at.error(c.span(), "client_id is for mqtt brokers only"));
        }
        if let Some(q) = &raw.qos {
            return Err(at.error(q.span(), "qos is for mqtt brokers only"));
        }
        Ok(())
    };
    let not_nats = |raw: &RawBroker| -> Result<(), ConfigError> {
        match &raw.max_control_line {
            Some(m) => Err(at.error(m.span(), "max_control_line is for nats brokers only")),
            None => Ok(()),
        }
    };
    if raw.kind.get_ref() != "sse" {
        super::origin::no_origin_keys(at, &raw)?;
    }
    match raw.kind.get_ref().as_str() {
        "memory" => {
            not_mqtt(&raw)?;
            not_nats(&raw)?;
            if let Some(u) = &raw.url {
                return Err(at.error(u.span(), "a memory broker has no url"));
            }
            Ok(BrokerKind::Memory)
        }
        "nats" => {
            not_mqtt(&raw)?;
            let max_control_line = within(
                at,
                raw.max_control_line.as_ref(),
                DEFAULT_MAX_CONTROL_LINE,
                &MAX_CONTROL_LINE_RANGE,
                || {
                    format!(
                        "max_control_line must be between {} and {} bytes",
                        MAX_CONTROL_LINE_RANGE.start(),
                        MAX_CONTROL_LINE_RANGE.end()
                    )
                },
            )?;
            Ok(BrokerKind::Nats {
                urls: urls("nats")?,
                max_control_line,
            })
        }
        "mqtt" => {
            not_nats(&raw)?;
            let mut list = urls("mqtt")?;
            let (Some(url), true) = (list.pop(), list.is_empty()) else {
                let span = raw.url.as_ref().map_or(0..0, |u| u.span());
                return Err(at.error(
                    span,
                    "an mqtt broker takes one url: put a broker cluster behind a load balancer \
                     and name that",
                ));
            };
            let qos = within(
                at,
                raw.qos.as_ref(),
                DEFAULT_MQTT_QOS,
                &MQTT_QOS_RANGE,
                || "qos must be 0 or 1".to_owned(),
            )?;
            let client_id = match &raw.client_id {
                Some(c) if c.get_ref().is_empty() => {
                    return Err(at.error(c.span(), "client_id cannot be empty"))
                }
                Some(c) => c.get_ref().clone(),
                // Two sluice instances with one client id would keep disconnecting each other.
                None => format!("sluice-{name}-{}", std::process::id()),
            };
            Ok(BrokerKind::Mqtt {
                url,
                client_id,
                qos,
            })
        }
        "sse" => {
            not_mqtt(&raw)?;
            not_nats(&raw)?;
            Ok(BrokerKind::Sse(super::origin::validate(
                at, name, &raw, base,
            )?))
        }
        other => Err(at.error(
            raw.kind.span(),
            format!(
                "unknown broker type {other:?}: expected \"mqtt\", \"nats\", \"sse\" or \"memory\""
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::BrokerKind;
    use crate::config::testing::{assert_refused, parse_text};

    #[test]
    fn a_nats_broker_takes_one_url_or_a_list() {
        let route = "[[routes]]\npath = \"/a\"\nbroker = \"n\"\ntopic = \"a\"\n";
        let config = |text: &str| format!("[brokers.n]\ntype = \"nats\"\n{text}\n{route}");
        let urls = |text: &str| match parse_text(&config(text)) {
            Ok(config) => match &config.brokers[0].kind {
                BrokerKind::Nats { urls, .. } => urls.clone(),
                other => panic!("{other:?}"),
            },
            Err(e) => panic!("{e}"),
        };
        assert_eq!(urls("url = \"nats://a:4222\""), ["nats://a:4222"]);
        assert_eq!(
            urls("url = [\"nats://a:4222\", \"nats://b:4222\"]"),
            ["nats://a:4222", "nats://b:4222"]
        );
    }

    #[test]
    fn each_broker_type_takes_its_own_keys_and_url() {
        assert_refused(&[
            (
                "[brokers.m]\ntype = \"kafka\"\n",
                "2:8: unknown broker type \"kafka\"",
            ),
            (
                "[brokers.m]\ntype = \"mqtt\"\nurl = \"mqtt://127.0.0.1\"\nqos = 2\n",
                "4:7: qos must be 0 or 1",
            ),
            (
                "[brokers.n]\ntype = \"nats\"\nurl = \"http://x\"\n",
                "3:7: a nats url must start with nats:// and name a host",
            ),
            (
                "[brokers.n]\ntype = \"nats\"\nurl = [\"nats://a\", \"nats://\"]\n",
                "3:7: a nats url must start with nats:// and name a host",
            ),
            (
                "[brokers.n]\ntype = \"nats\"\nurl = [\"nats://a\", \"nats://a\"]\n",
                "3:7: url \"nats://a\" is listed twice",
            ),
            (
                "[brokers.n]\ntype = \"nats\"\nurl = []\n",
                "3:7: url needs at least one address",
            ),
            (
                "[brokers.q]\ntype = \"mqtt\"\nurl = [\"mqtt://a\", \"mqtt://b\"]\n",
                "3:7: an mqtt broker takes one url",
            ),
            (
                "[brokers.n]\ntype = \"nats\"\nurl = \"nats://x\"\nqos = 1\n",
                "4:7: qos is for mqtt brokers only",
            ),
            (
                "[brokers.n]\ntype = \"nats\"\nurl = \"nats://x\"\nmax_control_line = 100\n",
                "4:20: max_control_line must be between 1024 and 16777216 bytes",
            ),
            (
                "[brokers.q]\ntype = \"mqtt\"\nurl = \"mqtt://x\"\nmax_control_line = 4096\n",
                "4:20: max_control_line is for nats brokers only",
            ),
        ]);
    }
}
