//! What the API verbs share: the connection to routerd and the two output formats.

use std::path::PathBuf;

use router_user::{
    Error,
    api::{ChangeResult, Client, Request},
};
use serde::de::DeserializeOwned;
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// The result of routerd's response, as JSON.
    Json,
}

/// How to reach routerd and how to print.
pub struct Api {
    pub socket: PathBuf,
    pub output: Output,
}

impl Api {
    /// Sends one request; the result, or routerd's error.
    pub fn call(&self, request: &Request) -> Result<Value, Error> {
        Client::connect(&self.socket)?.call(request)
    }

    /// A request that may change the desired state: prints what it did.
    pub fn change(&self, request: &Request) -> Result<(), Error> {
        let result = self.call(request)?;
        if self.output == Output::Json {
            return print_json(&result);
        }
        let change: ChangeResult = decode(result)?;
        let writes = format!(
            "{} map and {} kernel writes",
            change.writes.map, change.writes.kernel
        );
        if change.unchanged {
            println!("unchanged: already as asked, nothing written");
        } else if change.changed_routers.is_empty() {
            println!("applied ({writes})");
        } else {
            println!(
                "applied: router(s) {} ({writes})",
                change.changed_routers.join(", ")
            );
        }
        Ok(())
    }

    /// A query: the result as JSON, or through `table`.
    pub fn show<T: DeserializeOwned>(
        &self,
        request: &Request,
        table: impl FnOnce(T) -> String,
    ) -> Result<(), Error> {
        let result = self.call(request)?;
        if self.output == Output::Json {
            return print_json(&result);
        }
        print!("{}", table(decode(result)?));
        Ok(())
    }
}

pub fn print_json(value: &Value) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::io("encoding JSON", std::io::Error::other(e)))?;
    println!("{text}");
    Ok(())
}

fn decode<T: DeserializeOwned>(value: Value) -> Result<T, Error> {
    serde_json::from_value(value).map_err(|e| {
        Error::io(
            "reading routerd's response",
            std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        )
    })
}

pub use router_user::table::table;
