//! The broker permission model: what each kind of broker user may configure, write and
//! read in the domain's vhost, as RabbitMQ regexes.
//!
//! The broker is the first line of defence. Ordinary users (shells, scripts, programs)
//! may reach command queues through the default exchange, consume replies and their own
//! server-named subscription queues, and bind those to the event exchange — but not
//! publish events (that goes through `sendEvent`, where ACLs apply), declare or consume
//! command queues, or configure the exchange. Agents own the command queues and publish
//! events. A joined machine owns its queue and publishes only client event types.
//!
//! What the broker cannot express — the default exchange lets anyone with write on it
//! publish to any queue, including a caller's reply address — receivers check through
//! the broker-vouched `user_id` instead.

use crate::domain::Domain;

/// The event types a joined machine may publish.
pub const CLIENT_EVENTS: &[&str] =
    &["ClientAnnounce", "ClientSignature", "ClientPing", "ClientLeave", "Inventory", "UserSession"];

/// The kinds of broker user in a domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BrokerRole {
    /// A person or program calling commands and reading events.
    User,
    /// An agent: serves command queues, publishes events.
    Agent,
    /// A joined machine, by its client id.
    Client(String),
}

impl std::str::FromStr for BrokerRole {
    type Err = String;

    fn from_str(text: &str) -> Result<BrokerRole, String> {
        match text {
            "user" => Ok(BrokerRole::User),
            "agent" => Ok(BrokerRole::Agent),
            other => match other.strip_prefix("client:") {
                Some(id) if !id.is_empty() => Ok(BrokerRole::Client(id.to_owned())),
                _ => Err(format!("unknown role '{other}': use user, agent or client:<client id>")),
            },
        }
    }
}

/// One user's permissions in the domain's vhost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerPermissions {
    /// Resources the user may declare and delete.
    pub configure: String,
    /// Resources the user may publish to (exchanges) or bind (queues).
    pub write: String,
    /// Resources the user may consume from (queues) or bind from (exchanges).
    pub read: String,
    /// The exchange the topic permissions apply to.
    pub topic_exchange: String,
    /// Routing keys (event types) the user may publish.
    pub topic_write: String,
    /// Routing keys (event types) the user may bind to.
    pub topic_read: String,
}

impl BrokerPermissions {
    /// The permissions of `role` in `domain`.
    pub fn for_role(domain: &Domain, role: &BrokerRole) -> BrokerPermissions {
        let d = regex::escape(domain.as_str());
        let events = format!(r"{d}\.event");
        let commands = format!(r"{d}\.command\..+");
        // Server-named queues: event subscriptions of every kind of user.
        let own_queues = r"amq\.gen-.*";
        let (configure, write, read, topic_write, topic_read) = match role {
            BrokerRole::User => (
                format!("^{own_queues}$"),
                format!(r"^(amq\.default|{own_queues})$"),
                format!("^({events}|{own_queues})$"),
                "^$".to_owned(),
                ".*".to_owned(),
            ),
            BrokerRole::Agent => (
                format!("^({events}|{commands}|{own_queues})$"),
                format!(r"^(amq\.default|{events}|{commands}|{own_queues})$"),
                format!("^({events}|{commands}|{own_queues})$"),
                ".*".to_owned(),
                ".*".to_owned(),
            ),
            BrokerRole::Client(id) => {
                let own = format!(r"{d}\.client\.{}", regex::escape(id));
                (
                    format!("^({own}|{own_queues})$"),
                    format!(r"^({own}|{own_queues}|amq\.default|{events})$"),
                    format!("^({own}|{own_queues}|{events})$"),
                    format!("^({})$", CLIENT_EVENTS.join("|")),
                    "^ClientPoll$".to_owned(),
                )
            }
        };
        BrokerPermissions { configure, write, read, topic_exchange: domain.event_exchange(), topic_write, topic_read }
    }

    /// The `rabbitmqctl` arguments that give `user` these permissions in `vhost`.
    pub fn rabbitmqctl(&self, vhost: &str, user: &str) -> [Vec<String>; 2] {
        let owned = |parts: &[&str]| parts.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>();
        [
            owned(&["set_permissions", "-p", vhost, user, &self.configure, &self.write, &self.read]),
            owned(&[
                "set_topic_permissions",
                "-p",
                vhost,
                user,
                &self.topic_exchange,
                &self.topic_write,
                &self.topic_read,
            ]),
        ]
    }

    /// [`BrokerPermissions::rabbitmqctl`] as shell lines, arguments quoted where the
    /// shell would read them otherwise.
    pub fn rabbitmqctl_script(&self, vhost: &str, user: &str) -> String {
        let plain =
            |arg: &str| !arg.is_empty() && arg.chars().all(|c| c.is_ascii_alphanumeric() || "_./:-".contains(c));
        let quote = |arg: &str| if plain(arg) { arg.to_owned() } else { format!("'{}'", arg.replace('\'', r"'\''")) };
        self.rabbitmqctl(vhost, user)
            .iter()
            .map(|args| {
                let line: Vec<String> = args.iter().map(|a| quote(a)).collect();
                format!("rabbitmqctl {}\n", line.join(" "))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, name: &str) -> bool {
        regex::Regex::new(pattern).expect("a valid pattern").is_match(name)
    }

    #[test]
    fn users_reach_queues_only_through_the_default_exchange() {
        let domain = Domain::new("org.clacks").expect("domain");
        let user = BrokerPermissions::for_role(&domain, &BrokerRole::User);
        assert!(matches(&user.write, "amq.default"));
        assert!(!matches(&user.write, "org.clacks.event"), "events go through sendEvent");
        assert!(!matches(&user.read, "org.clacks.command.core"), "nobody else's requests");
        assert!(!matches(&user.configure, "org.clacks.command.core.alpha"));
        assert!(matches(&user.read, "amq.gen-abc") && matches(&user.configure, "amq.gen-abc"));
        assert!(!matches(&user.topic_write, "NodeStatus"));

        let agent = BrokerPermissions::for_role(&domain, &BrokerRole::Agent);
        assert!(matches(&agent.configure, "org.clacks.command.core.alpha"));
        assert!(matches(&agent.write, "org.clacks.event"));
        assert!(!matches(&agent.read, "org.clacksXcommand.core"), "dots are literal");

        let client = BrokerPermissions::for_role(&domain, &BrokerRole::Client("m1".into()));
        assert!(matches(&client.read, "org.clacks.client.m1"));
        assert!(!matches(&client.read, "org.clacks.client.m2"));
        assert!(matches(&client.topic_write, "ClientPing") && !matches(&client.topic_write, "NodeStatus"));
    }

    #[test]
    fn roles_parse_and_the_recipe_quotes_its_arguments() {
        assert_eq!("client:m1".parse::<BrokerRole>(), Ok(BrokerRole::Client("m1".into())));
        assert!("root".parse::<BrokerRole>().is_err());
        let domain = Domain::new("org.clacks").expect("domain");
        let script = BrokerPermissions::for_role(&domain, &BrokerRole::User).rabbitmqctl_script("/", "o'neil");
        expect_test::expect![[r#"
            rabbitmqctl set_permissions -p / 'o'\''neil' '^amq\.gen-.*$' '^(amq\.default|amq\.gen-.*)$' '^(org\.clacks\.event|amq\.gen-.*)$'
            rabbitmqctl set_topic_permissions -p / 'o'\''neil' org.clacks.event '^$' '.*'
        "#]]
        .assert_eq(&script);
    }
}
