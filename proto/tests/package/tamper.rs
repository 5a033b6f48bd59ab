//! Any change to a signed package is detected, with a message naming the cause.

use crate::packed_sample;
use fleetup_proto::keys::SecretKey;
use fleetup_proto::package::{self, Limits};

fn verify_bytes(bytes: &[u8], key: &SecretKey) -> Result<(), String> {
    package::verify_reader(std::io::Cursor::new(bytes), &[key.public()], &Limits::default())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
fn flipping_any_byte_fails_verification() {
    let (key, pkg, _dir) = packed_sample();
    let good = std::fs::read(&pkg).unwrap();
    verify_bytes(&good, &key).unwrap();
    let mut causes = std::collections::BTreeSet::new();
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        let err = verify_bytes(&bad, &key).expect_err(&format!("flipping byte {i} of {} went unnoticed", good.len()));
        causes.insert(err.split(':').next().unwrap().to_owned());
    }
    // The causes name what failed: the layout, the signature or the content digest.
    let all = causes.iter().cloned().collect::<Vec<_>>().join(" | ");
    assert!(all.contains("signature check failed"), "{all}");
    assert!(all.contains("integrity check failed"), "{all}");
    assert!(all.contains("not a fleetup package"), "{all}");
}

#[test]
fn truncated_or_extended_package_fails() {
    let (key, pkg, _dir) = packed_sample();
    let good = std::fs::read(&pkg).unwrap();
    assert!(verify_bytes(&good[..good.len() - 1], &key).is_err());
    let mut longer = good.clone();
    longer.extend_from_slice(&[0u8; 512]);
    let err = verify_bytes(&longer, &key).unwrap_err();
    assert!(err.contains("file size"), "{err}");
}

#[test]
fn removing_the_signature_is_named() {
    let (key, pkg, _dir) = packed_sample();
    let good = std::fs::read(&pkg).unwrap();
    // Rebuild the file without its second member.
    let mut archive = tar::Archive::new(good.as_slice());
    let mut builder = tar::Builder::new(Vec::new());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().display().to_string();
        if name == package::SIGNATURE_MEMBER {
            continue;
        }
        let mut header = entry.header().clone();
        builder.append_data(&mut header, &name, &mut entry).unwrap();
    }
    let unsigned = builder.into_inner().unwrap();
    let err = verify_bytes(&unsigned, &key).unwrap_err();
    assert!(err.contains("not signed"), "{err}");
}

#[test]
fn another_key_is_refused_and_named() {
    let (key, pkg, _dir) = packed_sample();
    let other = SecretKey::generate().unwrap();
    let err = package::verify_file(&pkg, &[other.public()], &Limits::default()).unwrap_err().to_string();
    assert!(err.contains(&key.public().key_id()) && err.contains("not trusted"), "{err}");
}

#[test]
fn signature_by_another_key_under_a_trusted_key_id_is_refused() {
    let (key, pkg, _dir) = packed_sample();
    let good = std::fs::read(&pkg).unwrap();
    // Re-sign the same index with a different key but keep the trusted key's id.
    let find = |needle: &[u8]| good.windows(needle.len()).position(|w| w == needle).unwrap();
    let start = find(b"{\"key_id\"");
    let end = start + good[start..].iter().position(|b| *b == b'}').unwrap() + 1;
    let sig: serde_json::Value = serde_json::from_slice(&good[start..end]).unwrap();
    let old_sig = sig["signature"].as_str().unwrap().as_bytes().to_vec();
    let index_len =
        usize::from_str_radix(std::str::from_utf8(&good[124..135]).unwrap().trim_matches(char::from(0)).trim(), 8)
            .unwrap();
    let other = SecretKey::generate().unwrap();
    let forged =
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, other.sign(&good[512..512 + index_len]));
    assert_eq!(forged.len(), old_sig.len());
    let at = find(&old_sig);
    let mut bad = good.clone();
    bad[at..at + old_sig.len()].copy_from_slice(forged.as_bytes());
    let err = verify_bytes(&bad, &key).unwrap_err();
    assert!(err.contains("signature check failed"), "{err}");
}
