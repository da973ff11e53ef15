//! Validates `[brokers.NAME]` into [`Broker`]s: the type, its url and the keys of that type only.

use super::raw::RawBroker;
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
        url: String,
        /// The server's `max_control_line`: the longest protocol line (and so subject) it takes.
        max_control_line: usize,
    },
    Mqtt {
        url: String,
        client_id: String,
        qos: u8,
    },
}

impl BrokerKind {
    pub fn syntax(&self) -> TopicSyntax {
        match self {
            BrokerKind::Nats { .. } => TopicSyntax::Nats,
            BrokerKind::Mqtt { .. } | BrokerKind::Memory => TopicSyntax::Mqtt,
        }
    }
}

/// Every `[brokers.NAME]`, in name order (the order routes' broker indices refer to).
pub(super) fn validate(
    at: &Locator,
    raw: BTreeMap<String, RawBroker>,
) -> Result<Vec<Broker>, ConfigError> {
    raw.into_iter()
        .map(|(name, broker)| {
            let kind = kind(at, &name, broker)?;
            Ok(Broker { name, kind })
        })
        .collect()
}

fn kind(at: &Locator, name: &str, raw: RawBroker) -> Result<BrokerKind, ConfigError> {
    let url = |scheme: &str| -> Result<String, ConfigError> {
        let Some(url) = &raw.url else {
            return Err(at.error(
                raw.kind.span(),
                format!("broker {name:?} needs a url, e.g. \"{scheme}://127.0.0.1\""),
            ));
        };
        if !url.get_ref().starts_with(&format!("{scheme}://")) {
            return Err(at.error(
                url.span(),
                format!("a {} url must start with {scheme}://", raw.kind.get_ref()),
            ));
        }
        Ok(url.get_ref().clone())
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
                url: url("nats")?,
                max_control_line,
            })
        }
        "mqtt" => {
            not_nats(&raw)?;
            let url = url("mqtt")?;
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
        other => Err(at.error(
            raw.kind.span(),
            format!("unknown broker type {other:?}: expected \"mqtt\", \"nats\" or \"memory\""),
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::assert_refused;

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
                "3:7: a nats url must start with nats://",
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
