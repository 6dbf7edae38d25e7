//! One router as JSON: the fields of a `[[router]]` table of the desired-state file, with
//! the same names and values, as the cluster's store holds a router (`docs/etcd.md`). It is
//! read by the file's own reader and checked by [`DesiredState::validate`], so a router in
//! the store is refused for exactly what would refuse it in a file, with the same message.

use super::{DesiredState, Router, file};
use crate::error::ConfigError;

impl Router {
    /// Reads and validates one router from its JSON form.
    pub fn from_json(text: &[u8]) -> Result<Router, ConfigError> {
        let written: file::FileRouter =
            serde_json::from_slice(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        let router = file::read_router(0, &written)?;
        let state = DesiredState {
            routers: vec![router],
        };
        state.validate()?;
        let [router] = <[Router; 1]>::try_from(state.routers)
            .map_err(|_| ConfigError::Syntax("one router expected".into()))?;
        Ok(router)
    }

    /// This router in its JSON form (what [`Router::from_json`] reads back to an equal
    /// value): its `[[router]]` table as [`Router::to_toml`] writes it, as JSON.
    pub fn to_json(&self) -> String {
        let table: toml::Table = match toml::from_str(&self.to_toml()) {
            Ok(t) => t,
            // The renderer writes what its own reader reads: not reached.
            Err(_) => return String::new(),
        };
        let router = table
            .get("router")
            .and_then(|r| r.as_array())
            .and_then(|r| r.first())
            .cloned()
            .unwrap_or(toml::Value::Table(Default::default()));
        serde_json::to_string(&router).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::tests::router_with;

    #[test]
    fn a_router_reads_back_from_its_json() {
        let router = router_with(
            "r1",
            "ns1",
            "[router.gateway]\ninterface = \"qg-a\"\naddress = \"198.18.0.2/24\"\n\
             nexthop = \"198.18.0.1\"\n\
             [[router.floating_ip]]\naddress = \"198.18.0.10\"\nfixed = \"10.0.1.5\"\n\
             [[router.route]]\ndestination = \"10.20.0.0/16\"\nnexthop = \"10.0.1.254\"\n",
        );
        let json = router.to_json();
        assert!(json.contains("\"floating_ip\""), "{json}");
        assert_eq!(Router::from_json(json.as_bytes()), Ok(router));
    }

    #[test]
    fn a_router_is_refused_as_in_a_file() {
        // The same content as a file and as JSON: the same message.
        let toml_text = "[[router]]\nid = \"r1\"\nnamespace = \"ns1\"\n\
                         [[router.interface]]\nname = \"qr-a\"\naddress = \"10.0.1.1/24\"\n\
                         [[router.route]]\ndestination = \"10.20.0.0/16\"\nnexthop = \"10.9.9.9\"\n";
        let from_file = DesiredState::parse(toml_text).expect_err("nexthop off-link");
        let json = r#"{"id": "r1", "namespace": "ns1",
            "interface": [{"name": "qr-a", "address": "10.0.1.1/24"}],
            "route": [{"destination": "10.20.0.0/16", "nexthop": "10.9.9.9"}]}"#;
        assert_eq!(Router::from_json(json.as_bytes()), Err(from_file));
        // Unknown fields are refused, as in the file.
        let json = r#"{"id": "r1", "namespace": "ns1", "colour": "blue"}"#;
        assert!(
            Router::from_json(json.as_bytes()).is_err_and(|e| e.to_string().contains("colour"))
        );
    }
}
