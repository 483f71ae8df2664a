//! The D-Bus proxy: the methods a local D-Bus service offers on one interface become
//! client commands `dbus_<method>`, without writing a plugin.
//!
//! The proxy watches the service's bus name. When it has an owner, every object path
//! below `/` is introspected and each method of the configured interface (names
//! starting with `_` stay private) becomes a command whose parameters follow the
//! method's `in` arguments: D-Bus integers are JSON integers (range-checked), `d` a
//! number, `b` a boolean, `s` and `o` strings, `as` a list of strings, `a{ss}` a map.
//! Methods with other argument types are left out and logged. A call converts the JSON
//! arguments, calls the method within the call's deadline and answers its `out`
//! values: one value as it is, several as a list. When the name loses its owner the
//! commands go; when it gains one they come back — each time the agents learn it from
//! a new `ClientSignature`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use clacks_core::command::{CallType, Command, CommandError, CommandSpec, Param, ValueType};
use clacks_core::rpc::ErrorCode;
use serde_json::{Map, Value, json};
use tracing::{info, warn};
use zbus::wire::StructureBuilder;
use zbus::{Connection, Structure, Variant};

/// The prefix of the commands the proxy makes.
pub const PREFIX: &str = "dbus_";

/// Which service to offer, and where.
#[derive(Clone, Debug)]
pub struct DbusOptions {
    /// A bus address (`unix:path=…`); `None`: the system bus.
    pub address: Option<String>,
    /// The bus name to watch, e.g. `org.clacks`.
    pub service: String,
    /// The interface whose methods become commands.
    pub interface: String,
    /// How often the name's owner is checked.
    pub poll: Duration,
}

/// One method found by introspection.
#[derive(Clone, Debug, PartialEq)]
struct Method {
    path: String,
    name: String,
    /// `(name, D-Bus type)` of the `in` arguments.
    inputs: Vec<(String, String)>,
}

/// The JSON type a D-Bus argument type takes, if the proxy supports it.
fn value_type(signature: &str) -> Option<ValueType> {
    match signature {
        "y" | "n" | "q" | "i" | "u" | "x" | "t" => Some(ValueType::Integer),
        "d" => Some(ValueType::Number),
        "b" => Some(ValueType::Boolean),
        "s" | "o" => Some(ValueType::String),
        "as" => Some(ValueType::Array),
        "a{ss}" => Some(ValueType::Object),
        _ => None,
    }
}

/// A JSON argument as the D-Bus value `signature` wants.
fn to_variant(signature: &str, value: &Value) -> Result<Variant<'static>, String> {
    let int = |min: i128, max: i128| -> Result<i128, String> {
        let n = value.as_i64().map(i128::from).or_else(|| value.as_u64().map(i128::from)).ok_or("an integer")?;
        if (min..=max).contains(&n) { Ok(n) } else { Err(format!("an integer in {min}…{max}")) }
    };
    let wanted = |what: &str| format!("expected {what}, got {value}");
    Ok(match signature {
        "y" => Variant::from(int(0, 255).map_err(|w| wanted(&w))? as u8),
        "n" => Variant::from(int(i16::MIN.into(), i16::MAX.into()).map_err(|w| wanted(&w))? as i16),
        "q" => Variant::from(int(0, u16::MAX.into()).map_err(|w| wanted(&w))? as u16),
        "i" => Variant::from(int(i32::MIN.into(), i32::MAX.into()).map_err(|w| wanted(&w))? as i32),
        "u" => Variant::from(int(0, u32::MAX.into()).map_err(|w| wanted(&w))? as u32),
        "x" => Variant::from(int(i64::MIN.into(), i64::MAX.into()).map_err(|w| wanted(&w))? as i64),
        "t" => Variant::from(int(0, u64::MAX.into()).map_err(|w| wanted(&w))? as u64),
        "d" => Variant::from(value.as_f64().ok_or_else(|| wanted("a number"))?),
        "b" => Variant::from(value.as_bool().ok_or_else(|| wanted("a boolean"))?),
        "s" => Variant::from(value.as_str().ok_or_else(|| wanted("a string"))?.to_owned()),
        "o" => {
            let text = value.as_str().ok_or_else(|| wanted("an object path"))?.to_owned();
            Variant::from(zbus::ObjectPath::try_from(text).map_err(|e| format!("not an object path: {e}"))?)
        }
        "as" => {
            let items = value.as_array().ok_or_else(|| wanted("a list of strings"))?;
            let texts: Option<Vec<String>> = items.iter().map(|i| i.as_str().map(str::to_owned)).collect();
            Variant::from(texts.ok_or_else(|| wanted("a list of strings"))?)
        }
        "a{ss}" => {
            let map = value.as_object().ok_or_else(|| wanted("a map of strings"))?;
            let pairs: Option<HashMap<String, String>> =
                map.iter().map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned()))).collect();
            Variant::from(pairs.ok_or_else(|| wanted("a map of strings"))?)
        }
        other => return Err(format!("D-Bus type '{other}' is not supported")),
    })
}

/// A D-Bus value as JSON.
fn to_json(variant: &Variant<'_>) -> Value {
    match variant {
        Variant::U8(n) => json!(n),
        Variant::Bool(b) => json!(b),
        Variant::I16(n) => json!(n),
        Variant::U16(n) => json!(n),
        Variant::I32(n) => json!(n),
        Variant::U32(n) => json!(n),
        Variant::I64(n) => json!(n),
        Variant::U64(n) => json!(n),
        Variant::F64(n) => json!(n),
        Variant::Str(s) => json!(s.as_str()),
        Variant::Signature(s) => json!(s.to_string()),
        Variant::ObjectPath(p) => json!(p.as_str()),
        Variant::Variant(inner) => to_json(inner),
        Variant::Array(items) => Value::Array(items.inner().iter().map(to_json).collect()),
        Variant::Dict(dict) => {
            let map: Map<String, Value> = dict
                .iter()
                .map(|(k, v)| {
                    let key = match to_json(k) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, to_json(v))
                })
                .collect();
            Value::Object(map)
        }
        Variant::Structure(s) => Value::Array(s.fields().iter().map(to_json).collect()),
        #[cfg(unix)]
        Variant::Fd(_) => Value::Null,
    }
}

/// A method's name and its arguments `(name, type, direction)`.
type Introspected = (String, Vec<(String, String, String)>);

/// Methods of `interface` in an introspection document, and the child nodes.
fn parse_introspection(xml: &str, interface: &str) -> (Vec<Introspected>, Vec<String>) {
    // The document type line carries nothing we need, and the parser refuses them.
    let body = match (xml.find("<!DOCTYPE"), xml.find("<node")) {
        (Some(doctype), Some(node)) if doctype < node => &xml[node..],
        _ => xml,
    };
    let Ok(root) = clacks_core::events::parse_xml(body.as_bytes()) else { return (Vec::new(), Vec::new()) };
    let children = root.children_named("node").filter_map(|n| n.attribute("name").map(str::to_owned)).collect();
    let methods = root
        .children_named("interface")
        .filter(|i| i.attribute("name") == Some(interface))
        .flat_map(|i| i.children_named("method"))
        .map(|m| {
            let args = m
                .children_named("arg")
                .map(|a| {
                    let field = |name: &str| a.attribute(name).unwrap_or_default().to_owned();
                    let direction = a.attribute("direction").unwrap_or("in").to_owned();
                    (field("name"), field("type"), direction)
                })
                .collect();
            (m.attribute("name").unwrap_or_default().to_owned(), args)
        })
        .collect();
    (methods, children)
}

/// The proxy for one service.
pub struct DbusProxy {
    connection: Connection,
    options: DbusOptions,
}

impl DbusProxy {
    /// Connects to the configured bus.
    pub async fn connect(options: DbusOptions) -> Result<DbusProxy, String> {
        let connection = match &options.address {
            Some(address) => zbus::conn::Builder::address(address.as_str())
                .build()
                .await
                .map_err(|e| format!("cannot connect to D-Bus at {address}: {e}"))?,
            None => Connection::system().await.map_err(|e| format!("cannot connect to the system D-Bus: {e}"))?,
        };
        Ok(DbusProxy { connection, options })
    }

    /// The unique name owning the service now, if any.
    async fn owner(&self) -> Option<String> {
        let reply = self
            .connection
            .call_method(
                Some("org.freedesktop.DBus"),
                "/org/freedesktop/DBus",
                Some("org.freedesktop.DBus"),
                "GetNameOwner",
                &(self.options.service.as_str(),),
            )
            .await
            .ok()?;
        reply.body().deserialize::<String>().ok()
    }

    async fn introspect(&self, path: &str) -> Result<String, String> {
        let reply = self
            .connection
            .call_method(
                Some(self.options.service.as_str()),
                path,
                Some("org.freedesktop.DBus.Introspectable"),
                "Introspect",
                &(),
            )
            .await
            .map_err(|e| format!("introspecting {path}: {e}"))?;
        reply.body().deserialize::<String>().map_err(|e| format!("introspecting {path}: {e}"))
    }

    /// Every method of the interface on every object path, and what was left out.
    async fn methods(&self) -> (Vec<Method>, Vec<String>) {
        let mut found: BTreeMap<String, Method> = BTreeMap::new();
        let mut problems = Vec::new();
        let mut paths = vec!["/".to_owned()];
        // A bounded walk: a service with a huge tree is not a reason to hang.
        let mut visited = 0;
        while let Some(path) = paths.pop() {
            visited += 1;
            if visited > 1000 {
                problems.push("more than 1000 object paths; the rest is not introspected".into());
                break;
            }
            let xml = match self.introspect(&path).await {
                Ok(xml) => xml,
                Err(e) => {
                    problems.push(e);
                    continue;
                }
            };
            let (methods, children) = parse_introspection(&xml, &self.options.interface);
            for child in children {
                paths.push(if path == "/" { format!("/{child}") } else { format!("{path}/{child}") });
            }
            for (name, args) in methods {
                if name.starts_with('_') || name.is_empty() {
                    continue;
                }
                if let Some(first) = found.get(&name) {
                    problems.push(format!("{name} on {path} is left out: {} has a method of that name", first.path));
                    continue;
                }
                let inputs: Vec<(String, String)> =
                    args.into_iter().filter(|(_, _, d)| d == "in").map(|(n, t, _)| (n, t)).collect();
                if let Some((arg, ty)) = inputs.iter().find(|(_, t)| value_type(t).is_none()) {
                    problems.push(format!("{name} on {path} is left out: argument '{arg}' has type '{ty}'"));
                    continue;
                }
                found.insert(name.clone(), Method { path: path.clone(), name, inputs });
            }
        }
        (found.into_values().collect(), problems)
    }

    fn command(self: &Arc<Self>, method: Method) -> Command {
        let params = method
            .inputs
            .iter()
            .enumerate()
            .map(|(i, (name, ty))| {
                let name = if name.is_empty() { format!("arg{i}") } else { name.clone() };
                Param::new(name, value_type(ty).unwrap_or(ValueType::Any), false)
            })
            .collect();
        let spec = CommandSpec {
            name: format!("{PREFIX}{}", method.name),
            target: "dbus".into(),
            params,
            help: format!("{}.{} on {} (D-Bus)", self.options.interface, method.name, method.path),
            needs_user: false,
            needs_queue: false,
            call_type: CallType::Normal,
            // What a D-Bus method answers depends on its out-arguments: any JSON.
            result: Default::default(),
            idempotent: false,
        };
        let (proxy, method) = (self.clone(), Arc::new(method));
        let handler: clacks_core::command::Handler = Arc::new(move |ctx, args| {
            let (proxy, method) = (proxy.clone(), method.clone());
            Box::pin(async move { proxy.call(&method, &args, ctx.deadline).await })
        });
        Command { spec, handler }
    }

    async fn call(
        &self,
        method: &Method,
        args: &[Value],
        deadline: tokio::time::Instant,
    ) -> Result<Value, CommandError> {
        let mut body = StructureBuilder::new();
        for ((name, ty), value) in method.inputs.iter().zip(args) {
            let variant = to_variant(ty, value)
                .map_err(|e| CommandError::new(ErrorCode::INVALID_PARAMS, format!("argument '{name}': {e}")))?;
            body = body.append_field(variant);
        }
        let (service, path) = (self.options.service.as_str(), method.path.as_str());
        let (interface, name) = (self.options.interface.as_str(), method.name.as_str());
        // D-Bus has no empty structure: a method without arguments gets an empty body.
        let call = async {
            if method.inputs.is_empty() {
                self.connection.call_method(Some(service), path, Some(interface), name, &()).await
            } else {
                let body: Structure<'_> = body.build()?;
                self.connection.call_method(Some(service), path, Some(interface), name, &body).await
            }
        };
        let reply = match tokio::time::timeout_at(deadline, call).await {
            Err(_) => {
                return Err(CommandError::new(ErrorCode::TIMEOUT, format!("{} did not answer in time", method.name)));
            }
            Ok(Err(zbus::Error::MethodError(name, message, _))) => {
                return Err(CommandError::new(ErrorCode::DBUS_ERROR, message.unwrap_or_default())
                    .with_details(json!({"name": name.as_str()})));
            }
            // zbus turns the standard org.freedesktop.DBus.Error.* replies into this.
            Ok(Err(zbus::Error::FDO(error))) => {
                let name = zbus::DBusError::name(error.as_ref()).to_string();
                let message = zbus::DBusError::description(error.as_ref()).unwrap_or_default().to_owned();
                return Err(CommandError::new(ErrorCode::DBUS_ERROR, message).with_details(json!({"name": name})));
            }
            Ok(Err(e)) => return Err(CommandError::failed(format!("D-Bus: {e}"))),
            Ok(Ok(reply)) => reply,
        };
        let body = reply.body();
        if body.signature().to_string().is_empty() {
            return Ok(Value::Null);
        }
        let values: Structure<'_> =
            body.deserialize().map_err(|e| CommandError::failed(format!("D-Bus reply: {e}")))?;
        let mut out: Vec<Value> = values.fields().iter().map(to_json).collect();
        Ok(if out.len() == 1 { out.remove(0) } else { Value::Array(out) })
    }
}

/// Keeps the client's `dbus_*` commands in step with the service.
pub async fn watch(client: super::ClientDaemon, options: DbusOptions, stopped: tokio_util::sync::CancellationToken) {
    let proxy = loop {
        match DbusProxy::connect(options.clone()).await {
            Ok(proxy) => break Arc::new(proxy),
            Err(e) => {
                warn!(error = %e, "D-Bus proxy waiting for the bus");
                tokio::select! {
                    _ = stopped.cancelled() => return,
                    _ = tokio::time::sleep(options.poll.max(Duration::from_secs(5))) => {}
                }
            }
        }
    };
    let mut owner: Option<String> = None;
    let mut tick = tokio::time::interval(options.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = proxy.owner().await;
        if now == owner {
            continue;
        }
        let commands = match &now {
            Some(_) => {
                let (methods, problems) = proxy.methods().await;
                for problem in problems {
                    warn!(service = %options.service, %problem, "D-Bus method left out");
                }
                methods.into_iter().map(|m| proxy.command(m)).collect()
            }
            None => Vec::new(),
        };
        info!(service = %options.service, present = now.is_some(), commands = commands.len(), "D-Bus service changed");
        client.set_commands(PREFIX, commands).await;
        owner = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = r#"<node>
  <interface name="org.clacks">
    <method name="Add"><arg name="a" type="i" direction="in"/><arg name="b" type="i" direction="in"/><arg type="i" direction="out"/></method>
    <method name="Ping"/>
    <method name="_Secret"></method>
  </interface>
  <interface name="org.other"><method name="Nope"/></interface>
  <node name="child"/>
  <node name="other"><interface name="org.clacks"><method name="Deep"/></interface></node>
</node>"#;

    #[test]
    fn introspection_names_methods_and_children() {
        let (methods, children) = parse_introspection(XML, "org.clacks");
        let names: Vec<&str> = methods.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["Add", "Ping", "_Secret"]);
        assert_eq!(methods[0].1.len(), 3);
        assert_eq!(children, ["child", "other"]);
    }

    #[test]
    fn arguments_are_checked_against_their_d_bus_types() {
        assert!(to_variant("i", &json!(5)).is_ok());
        assert!(to_variant("i", &json!(5_000_000_000_i64)).is_err_and(|e| e.contains("-2147483648")));
        assert!(to_variant("u", &json!(-1)).is_err());
        assert!(to_variant("s", &json!(1)).is_err_and(|e| e.contains("expected a string")));
        assert!(to_variant("as", &json!(["a", 1])).is_err());
        assert!(to_variant("o", &json!("not a path")).is_err());
        assert_eq!(to_json(&to_variant("as", &json!(["a", "b"])).unwrap_or(Variant::from(0u8))), json!(["a", "b"]));
        assert_eq!(value_type("a{sv}"), None);
    }
}
