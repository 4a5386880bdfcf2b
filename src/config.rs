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

/// Hide every secret of a URI before it is printed: the password of `scheme://user:password@…`,
/// the value of each query parameter whose name says it is a secret ([`is_secret_key`]:
/// `tlsCertificateKeyFilePassword`, `sslClientCertificateKeyPassword`, any `…password…`,
/// `…token…`, `…secret…`), and the secret properties inside `authMechanismProperties`
/// (`AWS_SESSION_TOKEN:…`), whose other properties (`SERVICE_NAME:…`) stay readable. A key is
/// matched case-insensitively and percent-decoded, as the MongoDB driver reads it. The user name
/// stays: it says which account, and it is no secret.
pub fn redact(uri: &str) -> String {
    let (head, query) = match uri.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (uri, None),
    };
    let mut out = redact_userinfo(head);
    if let Some(query) = query {
        // A fragment is no part of the query (no driver reads it): kept apart, unchanged.
        let (query, fragment) = match query.split_once('#') {
            Some((q, f)) => (q, Some(f)),
            None => (query, None),
        };
        out.push('?');
        out.push_str(&redact_query(query));
        if let Some(f) = fragment {
            out.push('#');
            out.push_str(f);
        }
    }
    out
}

/// `scheme://user:password@host…` (no query) with the password hidden.
fn redact_userinfo(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://") else {
        return uri.to_string();
    };
    let rest = &uri[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
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

/// A URI's query string with the secret values hidden, its separators (`&`, or `;` which the
/// MongoDB URI format also allows) and every other parameter as they were.
fn redact_query(query: &str) -> String {
    let mut out = String::with_capacity(query.len());
    let mut rest = query;
    loop {
        let end = rest.find(['&', ';']).unwrap_or(rest.len());
        let (param, tail) = rest.split_at(end);
        match param.split_once('=') {
            Some((key, value)) => {
                let name = percent_decode(key).to_ascii_lowercase();
                out.push_str(key);
                out.push('=');
                if is_secret_key(&name) {
                    out.push_str("***");
                } else if name == "authmechanismproperties" {
                    out.push_str(&redact_properties(value));
                } else {
                    out.push_str(value);
                }
            }
            None => out.push_str(param),
        }
        let mut chars = tail.chars();
        match chars.next() {
            Some(sep) => {
                out.push(sep);
                rest = chars.as_str();
            }
            None => return out,
        }
    }
}

/// `authMechanismProperties`' `NAME:value,NAME:value` with each secret property's value hidden.
/// Read percent-decoded (`AWS_SESSION_TOKEN%3A…` is the same property), so it is shown decoded.
fn redact_properties(value: &str) -> String {
    percent_decode(value)
        .split(',')
        .map(|p| match p.split_once(':') {
            Some((name, _)) if is_secret_key(&name.to_ascii_lowercase()) => format!("{name}:***"),
            _ => p.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether a (lower-case) parameter or property name holds a secret: a password
/// (`tlsCertificateKeyFilePassword`, the legacy `sslClientCertificateKeyPassword` and
/// `sslPEMKeyPassword`, a plain `password` or `pass`/`passwd`/`pwd`), a token
/// (`AWS_SESSION_TOKEN`, OIDC's), a secret or an access key. Broad on purpose: hiding a value
/// that was no secret costs a less readable log line, the other way round a credential.
fn is_secret_key(name: &str) -> bool {
    const SECRET_WORDS: [&str; 6] = ["pass", "pwd", "token", "secret", "credential", "apikey"];
    SECRET_WORDS.iter().any(|w| name.contains(w))
        || name.ends_with("access_key")
        || name.ends_with("accesskey")
        || name == "key"
        || name.ends_with("_key")
}

/// `%XX` escapes decoded (an invalid one kept as it is), for comparing names.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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

    #[test]
    fn redacts_secrets_in_the_query_string() {
        // The session token of temporary AWS credentials; the service name is no secret.
        assert_eq!(
            redact("mongodb+srv://AKIA:s3cret@c.mongodb.net/v3?authMechanism=MONGODB-AWS&authMechanismProperties=SERVICE_NAME:mongodb,AWS_SESSION_TOKEN:FwoGZX&w=majority"),
            "mongodb+srv://AKIA:***@c.mongodb.net/v3?authMechanism=MONGODB-AWS&authMechanismProperties=SERVICE_NAME:mongodb,AWS_SESSION_TOKEN:***&w=majority"
        );
        // Percent-encoded, as a URI builder writes it: the same property.
        let r = redact("mongodb://h/db?authMechanismProperties=AWS_SESSION_TOKEN%3AFwoGZX%2FabC");
        assert!(!r.contains("FwoGZX"), "{r}");
        // Key passwords, modern and legacy, any case, `;` separators, percent-encoded names.
        for (uri, secret) in [
            (
                "mongodb://h/db?tls=true&tlsCertificateKeyFilePassword=hunter2",
                "hunter2",
            ),
            (
                "mongodb://h/db?TLSCERTIFICATEKEYFILEPASSWORD=hunter2&x=1",
                "hunter2",
            ),
            (
                "mongodb://h/db?ssl=true;sslClientCertificateKeyPassword=hunter2",
                "hunter2",
            ),
            ("mongodb://h/db?sslPEMKeyPassword=hunter2", "hunter2"),
            (
                "mongodb://h/db?tlsCertificateKeyFile%50assword=hunter2",
                "hunter2",
            ),
            ("amqp://h:5672/%2f?heartbeat=30&password=hunter2", "hunter2"),
            (
                "amqps://u@h/%2f?auth_mechanism=plain&token=hunter2",
                "hunter2",
            ),
        ] {
            let r = redact(uri);
            assert!(!r.contains(secret), "{uri} -> {r}");
            assert!(r.contains("=***"), "{uri} -> {r}");
        }
        // Everything else as it was: other parameters, separators, a fragment, a bare flag.
        assert_eq!(
            redact("mongodb://u:pw@h1,h2/db?replicaSet=rs0;readPreference=secondaryPreferred&directConnection#frag"),
            "mongodb://u:***@h1,h2/db?replicaSet=rs0;readPreference=secondaryPreferred&directConnection#frag"
        );
        assert_eq!(
            redact("mongodb://h/db?tlsCertificateKeyFile=/etc/k.pem&authSource=admin"),
            "mongodb://h/db?tlsCertificateKeyFile=/etc/k.pem&authSource=admin"
        );
        assert_eq!(redact("mongodb://h/db?"), "mongodb://h/db?");
    }

    #[test]
    fn percent_decoding_keeps_invalid_escapes() {
        assert_eq!(percent_decode("a%3Ab%2f"), "a:b/");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
