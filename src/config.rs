//! Validated configuration shared by the binaries (the clap argument structs live in `bin/` and
//! turn into these), connection set-up, and secret redaction for anything that gets printed.

use anyhow::{bail, Context as _};
use mongodb::options::ClientOptions;
use mongodb::{Client, Database};

/// Where everything lives. Built from flags with env fallbacks (`V2_MONGO_URI`, `V3_MONGO_URI`,
/// `AMQP_URI`, `QUEUE_PREFIX`).
#[derive(Clone)]
pub struct Endpoints {
    pub v2_uri: String,
    pub v3_uri: String,
    pub amqp_uri: String,
    pub queue_prefix: String,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoints")
            .field("v2_uri", &redact(&self.v2_uri))
            .field("v3_uri", &redact(&self.v3_uri))
            .field("amqp_uri", &redact(&self.amqp_uri))
            .field("queue_prefix", &self.queue_prefix)
            .finish()
    }
}

/// Hide the password of a `scheme://user:password@host…` URI.
pub fn redact(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://") else {
        return uri.to_string();
    };
    let rest = &uri[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return uri.to_string();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &uri[..scheme_end + 3],
            &rest[..colon],
            &rest[at..]
        ),
        None => uri.to_string(),
    }
}

/// Connect to a MongoDB URI that names its database (`mongodb://host/dbname?...`).
pub async fn mongo_database(uri: &str, app_name: &str) -> anyhow::Result<Database> {
    let mut opts = ClientOptions::parse(uri)
        .await
        .with_context(|| format!("invalid MongoDB URI {}", redact(uri)))?;
    let Some(db) = opts.default_database.clone() else {
        bail!(
            "MongoDB URI {} must name its database (mongodb://host/<database>)",
            redact(uri)
        );
    };
    opts.app_name = Some(app_name.to_string());
    let client = Client::with_options(opts)
        .with_context(|| format!("MongoDB client for {}", redact(uri)))?;
    Ok(client.database(&db))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact("mongodb://u:s3cret@h:27017/db?x=1"),
            "mongodb://u:***@h:27017/db?x=1"
        );
        assert_eq!(
            redact("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("mongodb://h:27017/db"), "mongodb://h:27017/db");
        assert_eq!(redact("mongodb://user@h/db"), "mongodb://user@h/db");
        assert_eq!(redact("not a uri"), "not a uri");
        let e = Endpoints {
            v2_uri: "mongodb://a:pw1@h/v2".into(),
            v3_uri: "mongodb://a:pw2@h/v3".into(),
            amqp_uri: "amqp://a:pw3@h".into(),
            queue_prefix: "p".into(),
        };
        let s = format!("{e:?}");
        assert!(
            !s.contains("pw1") && !s.contains("pw2") && !s.contains("pw3"),
            "{s}"
        );
    }
}
