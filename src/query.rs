//! Query strings of the upgrade and API URLs (`?vsn=`, `?token=`,
//! `?topic=`), percent-decoded as browsers encode them. A module of its own
//! because both the HTTP layer and token authentication read them.

/// The first value of query parameter `name`, percent-decoded.
pub fn param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_value_percent_decoded() {
        assert_eq!(
            param(Some("token=x&vsn=2.0.0"), "vsn").as_deref(),
            Some("2.0.0")
        );
        assert_eq!(param(Some("vsn=1%2E0"), "vsn").as_deref(), Some("1.0"));
        assert_eq!(param(Some("vsn=1&vsn=2"), "vsn").as_deref(), Some("1"));
        assert_eq!(param(Some("a=1"), "vsn"), None);
        assert_eq!(param(None, "vsn"), None);
    }
}
