//! Neutron's API objects as the openstack client prints them with `-f json`, read into
//! typed values: routers (`router show`), ports (`port show`, or the rows of `port list
//! --long`), subnets (`subnet show`) and floating IPs (`floating ip show`, or the rows of
//! `floating ip list --long`).
//!
//! A `show` prints an object with the API's field names (`device_owner`, `fixed_ips`); a
//! `list` prints rows keyed by the table's column headers (`Device Owner`, `Fixed IP
//! Addresses`). An object's kind is told by the fields it has. A document is one object,
//! or an array of documents (a list's output, or several outputs gathered into one array).

use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde_json::{Map, Value};

use crate::error::Error;

/// One of an object's addresses on a subnet (`fixed_ips`, `external_fixed_ips`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FixedIp {
    pub subnet_id: String,
    pub ip_address: IpAddr,
}

/// A router's external gateway (`external_gateway_info`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayInfo {
    pub network_id: Option<String>,
    /// Neutron's default is on.
    pub enable_snat: bool,
    pub external_fixed_ips: Vec<FixedIp>,
}

/// An extra route of a router (`routes`), as text: it may be IPv6.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtraRoute {
    pub destination: String,
    pub nexthop: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Router {
    pub id: String,
    pub name: String,
    pub gateway: Option<GatewayInfo>,
    pub routes: Vec<ExtraRoute>,
    /// The interface ports `router show` lists (`interfaces_info`); `None` from a client
    /// that does not print them.
    pub interface_ports: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    pub id: String,
    pub device_owner: String,
    /// The router (or VM) the port belongs to: `port show` has it, `port list` not.
    pub device_id: Option<String>,
    pub fixed_ips: Vec<FixedIp>,
    pub mac_address: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subnet {
    pub id: String,
    pub cidr: String,
    pub gateway_ip: Option<IpAddr>,
    pub ip_version: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FloatingIp {
    pub id: String,
    pub floating_ip_address: IpAddr,
    pub fixed_ip_address: Option<IpAddr>,
    pub port_id: Option<String>,
    pub router_id: Option<String>,
}

/// Every object read, each once (an object given twice, by a `list` and a `show`, is kept
/// once), in the order first read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NeutronObjects {
    pub routers: Vec<Router>,
    pub ports: Vec<Port>,
    pub subnets: Vec<Subnet>,
    pub floating_ips: Vec<FloatingIp>,
}

impl NeutronObjects {
    /// Reads `path`: a directory (every `*.json` file in it, in the order of their names)
    /// or one JSON file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let mut objects = Self::default();
        let files: Vec<PathBuf> = if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| Error::io(format!("reading {}", path.display()), e))?
                .flatten()
                .map(|entry| entry.path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect();
            files.sort();
            files
        } else {
            vec![path.to_path_buf()]
        };
        for file in files {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| Error::io(format!("reading {}", file.display()), e))?;
            objects.add_json(&file.display().to_string(), &text)?;
        }
        Ok(objects)
    }

    /// Adds the objects of one JSON document, `source` naming it in messages.
    pub fn add_json(&mut self, source: &str, text: &str) -> Result<(), Error> {
        let doc: Value = serde_json::from_str(text)
            .map_err(|e| Error::import(source, format!("not a JSON document: {e}")))?;
        self.add_document(source, &doc)
    }

    /// Adds the objects of a document: an object, or an array of documents.
    pub fn add_document(&mut self, source: &str, doc: &Value) -> Result<(), Error> {
        match doc {
            Value::Array(items) => items
                .iter()
                .try_for_each(|item| self.add_document(source, item)),
            Value::Object(o) => self.add_object(source, o),
            other => Err(Error::import(
                source,
                format!(
                    "expected an object or an array of objects as `openstack ... -f json` prints them, found {other}"
                ),
            )),
        }
    }

    fn add_object(&mut self, source: &str, o: &Map<String, Value>) -> Result<(), Error> {
        let fields = Fields { source, o };
        if o.contains_key("external_gateway_info") {
            let router = fields.router()?;
            return add_once(&mut self.routers, router, |r| &r.id, "router", source);
        }
        if has(o, "device_owner", "Device Owner") || has(o, "fixed_ips", "Fixed IP Addresses") {
            let port = fields.port()?;
            return add_port(&mut self.ports, port, source);
        }
        if o.contains_key("cidr") {
            let subnet = fields.subnet()?;
            return add_once(&mut self.subnets, subnet, |s| &s.id, "subnet", source);
        }
        if has(o, "floating_ip_address", "Floating IP Address") {
            let fip = fields.floating_ip()?;
            return add_once(
                &mut self.floating_ips,
                fip,
                |f| &f.id,
                "floating IP",
                source,
            );
        }
        let what = o
            .get("id")
            .or_else(|| o.get("ID"))
            .and_then(Value::as_str)
            .map_or_else(|| "an object".to_string(), |id| format!("object {id}"));
        let keys: Vec<&str> = o.keys().map(String::as_str).take(8).collect();
        Err(Error::import(
            format!("{what} ({source})"),
            format!(
                "not a router (`router show`), port (`port show`, `port list --long`), subnet (`subnet show`) or floating IP (`floating ip show`, `floating ip list --long`); its fields: {}",
                keys.join(", ")
            ),
        ))
    }

    /// Subnets by id.
    pub fn subnets_by_id(&self) -> HashMap<&str, &Subnet> {
        self.subnets.iter().map(|s| (s.id.as_str(), s)).collect()
    }
}

fn has(o: &Map<String, Value>, show: &str, list: &str) -> bool {
    o.contains_key(show) || o.contains_key(list)
}

/// Adds `item` unless an equal one is there; another one with its id is an error.
fn add_once<T: PartialEq>(
    items: &mut Vec<T>,
    item: T,
    id: impl Fn(&T) -> &String,
    kind: &str,
    source: &str,
) -> Result<(), Error> {
    match items.iter().find(|x| id(x) == id(&item)) {
        None => {
            items.push(item);
            Ok(())
        }
        Some(x) if *x == item => Ok(()),
        Some(_) => Err(Error::import(
            format!("{kind} {} ({source})", id(&item)),
            "given twice, differently",
        )),
    }
}

/// Adds a port; a port given by a `list` row and by a `show` is kept once, with the
/// `show`'s device id.
fn add_port(ports: &mut Vec<Port>, port: Port, source: &str) -> Result<(), Error> {
    let Some(x) = ports.iter_mut().find(|x| x.id == port.id) else {
        ports.push(port);
        return Ok(());
    };
    let agree = |a: &Option<String>, b: &Option<String>| a.is_none() || b.is_none() || a == b;
    if x.device_owner != port.device_owner
        || x.fixed_ips != port.fixed_ips
        || !agree(&x.device_id, &port.device_id)
        || !agree(&x.mac_address, &port.mac_address)
    {
        return Err(Error::import(
            format!("port {} ({source})", port.id),
            "given twice, differently",
        ));
    }
    x.device_id = x.device_id.take().or(port.device_id);
    x.mac_address = x.mac_address.take().or(port.mac_address);
    Ok(())
}

/// One object's fields, for messages naming it and its source.
struct Fields<'a> {
    source: &'a str,
    o: &'a Map<String, Value>,
}

impl Fields<'_> {
    /// The value of field `show` (as `show` prints it) or `list` (as a `list` row's
    /// column); `null` is absent.
    fn get(&self, show: &str, list: &str) -> Option<&Value> {
        self.o
            .get(show)
            .or_else(|| self.o.get(list))
            .filter(|v| !v.is_null())
    }

    fn id(&self) -> String {
        self.get("id", "ID")
            .and_then(Value::as_str)
            .unwrap_or("(no id)")
            .to_string()
    }

    fn bad(&self, kind: &str, problem: impl Into<String>) -> Error {
        Error::import(format!("{kind} {} ({})", self.id(), self.source), problem)
    }

    fn text(&self, kind: &str, show: &str, list: &str) -> Result<Option<String>, Error> {
        match self.get(show, list) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.bad(kind, format!("{show} is {other}, not a string"))),
        }
    }

    fn required(&self, kind: &str, show: &str, list: &str) -> Result<String, Error> {
        self.text(kind, show, list)?
            .ok_or_else(|| self.bad(kind, format!("has no {show}")))
    }

    fn address(&self, kind: &str, key: &str, text: &str) -> Result<IpAddr, Error> {
        text.parse()
            .map_err(|_| self.bad(kind, format!("{key} \"{text}\" is not an IP address")))
    }

    /// A structured field (an object or a list): JSON as the client prints it, or JSON
    /// inside a string. A client that prints it as `key='value'` text is not read.
    fn structured(&self, kind: &str, show: &str, list: &str) -> Result<Option<Value>, Error> {
        match self.get(show, list) {
            None => Ok(None),
            Some(Value::String(s)) => serde_json::from_str(s).map(Some).map_err(|_| {
                self.bad(
                    kind,
                    format!(
                        "{show} is printed as text (\"{s}\"), not as JSON: print it with an openstack client that writes structured fields as JSON"
                    ),
                )
            }),
            Some(v) => Ok(Some(v.clone())),
        }
    }

    fn fixed_ips(&self, kind: &str, key: &str, v: Option<Value>) -> Result<Vec<FixedIp>, Error> {
        let Some(v) = v else {
            return Ok(Vec::new());
        };
        let items = v
            .as_array()
            .ok_or_else(|| self.bad(kind, format!("{key} is not a list")))?;
        items
            .iter()
            .map(|item| {
                let ip = item.get("ip_address").and_then(Value::as_str);
                let subnet = item.get("subnet_id").and_then(Value::as_str);
                match (ip, subnet) {
                    (Some(ip), Some(subnet)) => Ok(FixedIp {
                        subnet_id: subnet.to_string(),
                        ip_address: self.address(kind, key, ip)?,
                    }),
                    _ => Err(self.bad(
                        kind,
                        format!("{key} has an entry without ip_address and subnet_id: {item}"),
                    )),
                }
            })
            .collect()
    }

    fn router(&self) -> Result<Router, Error> {
        const KIND: &str = "router";
        let id = self.required(KIND, "id", "ID")?;
        let gateway = match self.structured(KIND, "external_gateway_info", "")? {
            None => None,
            Some(g) => {
                let network_id = g
                    .get("network_id")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let enable_snat = match g.get("enable_snat") {
                    None | Some(Value::Null) => true,
                    Some(Value::Bool(b)) => *b,
                    Some(other) => {
                        return Err(self.bad(
                            KIND,
                            format!(
                                "external_gateway_info.enable_snat is {other}, not true or false"
                            ),
                        ));
                    }
                };
                let external_fixed_ips = self.fixed_ips(
                    KIND,
                    "external_gateway_info.external_fixed_ips",
                    g.get("external_fixed_ips").cloned(),
                )?;
                Some(GatewayInfo {
                    network_id,
                    enable_snat,
                    external_fixed_ips,
                })
            }
        };
        let routes = match self.structured(KIND, "routes", "Routes")? {
            None => Vec::new(),
            Some(v) => v
                .as_array()
                .ok_or_else(|| self.bad(KIND, "routes is not a list"))?
                .iter()
                .map(|r| {
                    let field = |k: &str| r.get(k).and_then(Value::as_str).map(str::to_string);
                    match (field("destination"), field("nexthop")) {
                        (Some(destination), Some(nexthop)) => Ok(ExtraRoute {
                            destination,
                            nexthop,
                        }),
                        _ => Err(self.bad(
                            KIND,
                            format!("routes has an entry without destination and nexthop: {r}"),
                        )),
                    }
                })
                .collect::<Result<_, _>>()?,
        };
        let interface_ports = match self.structured(KIND, "interfaces_info", "")? {
            None => None,
            Some(v) => Some(
                v.as_array()
                    .ok_or_else(|| self.bad(KIND, "interfaces_info is not a list"))?
                    .iter()
                    .map(|i| {
                        i.get("port_id")
                            .and_then(Value::as_str)
                            .map(str::to_string)
                            .ok_or_else(|| {
                                self.bad(
                                    KIND,
                                    format!("interfaces_info has an entry without port_id: {i}"),
                                )
                            })
                    })
                    .collect::<Result<_, _>>()?,
            ),
        };
        Ok(Router {
            name: self.text(KIND, "name", "Name")?.unwrap_or_default(),
            id,
            gateway,
            routes,
            interface_ports,
        })
    }

    fn port(&self) -> Result<Port, Error> {
        const KIND: &str = "port";
        let id = self.required(KIND, "id", "ID")?;
        let device_owner = self.text(KIND, "device_owner", "Device Owner")?.ok_or_else(|| {
            self.bad(
                KIND,
                "has no device_owner: list ports with `openstack port list --long` (or `port show`)",
            )
        })?;
        let fixed_ips = self.structured(KIND, "fixed_ips", "Fixed IP Addresses")?;
        Ok(Port {
            id,
            device_owner,
            device_id: self
                .text(KIND, "device_id", "Device ID")?
                .filter(|d| !d.is_empty()),
            fixed_ips: self.fixed_ips(KIND, "fixed_ips", fixed_ips)?,
            mac_address: self.text(KIND, "mac_address", "MAC Address")?,
        })
    }

    fn subnet(&self) -> Result<Subnet, Error> {
        const KIND: &str = "subnet";
        let gateway_ip = self
            .text(KIND, "gateway_ip", "Gateway")?
            .map(|text| self.address(KIND, "gateway_ip", &text))
            .transpose()?;
        let ip_version = match self.get("ip_version", "IP Version") {
            Some(Value::Number(n)) if n.as_u64() == Some(4) => 4,
            Some(Value::Number(n)) if n.as_u64() == Some(6) => 6,
            None => 4,
            Some(other) => {
                return Err(self.bad(KIND, format!("ip_version is {other}, not 4 or 6")));
            }
        };
        Ok(Subnet {
            id: self.required(KIND, "id", "ID")?,
            cidr: self.required(KIND, "cidr", "Subnet")?,
            gateway_ip,
            ip_version,
        })
    }

    fn floating_ip(&self) -> Result<FloatingIp, Error> {
        const KIND: &str = "floating IP";
        let address = self.required(KIND, "floating_ip_address", "Floating IP Address")?;
        let fixed = self.text(KIND, "fixed_ip_address", "Fixed IP Address")?;
        if !self.o.contains_key("router_id") && !self.o.contains_key("Router") {
            return Err(self.bad(
                KIND,
                "has no router: list floating IPs with `openstack floating ip list --long` (or `floating ip show`)",
            ));
        }
        Ok(FloatingIp {
            id: self.required(KIND, "id", "ID")?,
            floating_ip_address: self.address(KIND, "floating_ip_address", &address)?,
            fixed_ip_address: fixed
                .map(|text| self.address(KIND, "fixed_ip_address", &text))
                .transpose()?,
            port_id: self.text(KIND, "port_id", "Port")?,
            router_id: self.text(KIND, "router_id", "Router")?,
        })
    }
}
