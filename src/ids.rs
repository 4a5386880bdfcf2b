//! Deterministic ids. Every id the migration invents (commit ids, file ids) is a hash of what it
//! stands for — viz id, V2 version range, purpose — so a re-run, or two workers racing on the same
//! viz, produce byte-identical documents instead of duplicates.

use sha2::{Digest, Sha256};

fn digest_hex(parts: &[&str], hex_len: usize) -> String {
    let mut h = Sha256::new();
    for p in parts {
        // Length-prefix every part so ("ab","c") and ("a","bc") never collide.
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    let mut s = hex::encode(h.finalize());
    s.truncate(hex_len);
    s
}

/// A V3 commit id (32 lowercase hex chars, like V3's own).
pub fn commit_id(viz: &str, v_from: u64, v_to: u64, purpose: &str) -> String {
    digest_hex(
        &[
            "commit",
            viz,
            &v_from.to_string(),
            &v_to.to_string(),
            purpose,
        ],
        32,
    )
}

/// A V3 file id (8 lowercase hex chars). `salt` lets callers step past a collision.
pub fn file_id(viz: &str, version: u64, slot: usize, salt: u32) -> String {
    digest_hex(
        &[
            "file",
            viz,
            &version.to_string(),
            &slot.to_string(),
            &salt.to_string(),
        ],
        8,
    )
}

/// A digest naming the content of `value` (for "did this change since last time?" checks).
pub fn fingerprint(value: &serde_json::Value) -> String {
    digest_hex(&["fingerprint", &value.to_string()], 32)
}

/// Upvote and Permission ids: `<userId>-<vizId>` (spec 2.1).
pub fn user_viz_id(user: &str, viz: &str) -> String {
    format!("{user}-{viz}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_shaped() {
        let a = commit_id("v", 1, 2, "session");
        assert_eq!(a, commit_id("v", 1, 2, "session"));
        assert_eq!(a.len(), 32);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, commit_id("v", 1, 3, "session"));
        assert_ne!(a, commit_id("v", 1, 2, "start"));
        assert_ne!(a, commit_id("w", 1, 2, "session"));
        let f = file_id("v", 3, 0, 0);
        assert_eq!(f.len(), 8);
        assert_ne!(f, file_id("v", 3, 1, 0));
        assert_ne!(f, file_id("v", 3, 0, 1));
    }

    #[test]
    fn parts_are_length_prefixed() {
        assert_ne!(digest_hex(&["ab", "c"], 32), digest_hex(&["a", "bc"], 32));
    }
}
