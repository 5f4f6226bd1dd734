//! `headcount token` (SPEC §8.1) from the outside: the token it prints
//! verifies with the library's `auth` module under the matching secret or
//! public key, and bad input exits 2 with a message naming the flag.

mod common;

use common::*;
use headcount::auth::{authenticate, unix_now, Mode, Verifier};
use std::path::PathBuf;
use std::process::Output;

fn token(args: &[&str]) -> Output {
    bare_command().arg("token").args(args).output().unwrap()
}

fn printed(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    assert!(
        text.ends_with('\n') && text.matches('\n').count() == 1,
        "{text:?}"
    );
    text.trim_end().to_owned()
}

fn key(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
}

#[test]
fn an_hs256_token_verifies_with_the_secret() {
    let before = unix_now();
    let jwt = printed(&token(&["--secret", "s", "--sub", "a", "--ttl", "1h"]));
    let v = Verifier::from_secret(b"s").unwrap();
    let id = authenticate(&v, Mode::Required, Some(&jwt), unix_now())
        .unwrap()
        .unwrap();
    assert_eq!(id.sub(), "a");
    let exp = id.exp().unwrap();
    assert!(exp >= before + 3600 && exp <= unix_now() + 3600, "{exp}");
    assert!(id.may_join("any:topic"));
    assert!(id.info().is_none());
    // Another secret refuses it.
    let other = Verifier::from_secret(b"t").unwrap();
    assert!(authenticate(&other, Mode::Required, Some(&jwt), unix_now()).is_err());
    // The default lifetime is an hour too.
    let jwt = printed(&token(&["--secret", "s", "--sub", "a"]));
    let id = authenticate(&v, Mode::Required, Some(&jwt), unix_now())
        .unwrap()
        .unwrap();
    assert!(id.exp().unwrap() >= before + 3600);
}

#[test]
fn topics_and_info_are_carried() {
    let jwt = printed(&token(&[
        "--secret",
        "s",
        "--sub",
        "alice",
        "--topics",
        "rooms:*,lobby",
        "--topics",
        "dm:alice",
        "--info",
        r#"{ "name": "Alice" }"#,
        "--ttl",
        "90s",
    ]));
    let v = Verifier::from_secret(b"s").unwrap();
    let id = authenticate(&v, Mode::Required, Some(&jwt), unix_now())
        .unwrap()
        .unwrap();
    assert!(id.may_join("rooms:1") && id.may_join("lobby") && id.may_join("dm:alice"));
    assert!(!id.may_join("dm:bob") && !id.may_join("patterns:stats"));
    assert_eq!(id.info().unwrap().get(), r#"{"name":"Alice"}"#);
    assert!(id.exp().unwrap() <= unix_now() + 90);
}

#[test]
fn a_private_key_chooses_the_algorithm_and_the_public_key_verifies() {
    for kind in ["rsa", "ec-p256", "ed25519"] {
        let private = key(&format!("test-only-{kind}-private.pem"));
        let jwt = printed(&token(&[
            "--private-key",
            private.to_str().unwrap(),
            "--sub",
            "a",
        ]));
        let v =
            Verifier::from_public_key_file(&key(&format!("test-only-{kind}-public.pem"))).unwrap();
        let id = authenticate(&v, Mode::Required, Some(&jwt), unix_now());
        assert_eq!(id.unwrap().unwrap().sub(), "a", "{kind}");
    }
}

#[test]
fn bad_input_exits_2_with_a_message() {
    let public = key("test-only-rsa-public.pem");
    let cases: &[(&[&str], &str)] = &[
        (
            &["--secret", "s", "--sub", "a", "--info", "notjson"],
            "--info",
        ),
        (&["--secret", "s", "--sub", "a", "--info", "[1]"], "--info"),
        (&["--secret", "s", "--sub", "a", "--ttl", "soon"], "--ttl"),
        (&["--secret", "s", "--sub", "a", "--ttl", "0s"], "--ttl"),
        (&["--secret", "s", "--sub", ""], "--sub"),
        (&["--secret", "", "--sub", "a"], "--secret"),
        (&["--sub", "a"], "--secret"),
        (&["--secret", "s"], "--sub"),
        (
            &["--private-key", "/nonexistent.pem", "--sub", "a"],
            "--private-key",
        ),
        (
            &["--private-key", public.to_str().unwrap(), "--sub", "a"],
            "public key",
        ),
        (
            &[
                "--secret",
                "s",
                "--private-key",
                public.to_str().unwrap(),
                "--sub",
                "a",
            ],
            "--private-key",
        ),
    ];
    for (args, named) in cases {
        let out = token(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
    let big = format!(r#"{{"n":"{}"}}"#, "x".repeat(1100));
    let out = token(&["--secret", "s", "--sub", "a", "--info", &big]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1024"));
}
