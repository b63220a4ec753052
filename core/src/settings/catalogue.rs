//! The catalogue: what `POST /checkout` may sell, read from the `PRODUCTS` setting.
//!
//! The client names a product by its slug and nothing else: the price, the mode, the
//! largest quantity and the countries to ship to are ours. A malformed catalogue is
//! refused as a whole (reported by name, never by value), so a typo can never sell the
//! wrong price or skip the shipping address.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Largest `max_quantity` accepted: a bound on what a typo could sell.
pub const MAX_QUANTITY: u32 = 10_000;

/// Checkout Session `mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Payment,
    Subscription,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Payment => "payment",
            Self::Subscription => "subscription",
        }
    }
}

/// One catalogue entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    /// The Stripe Price (`price_…`) charged: never taken from the client.
    pub price: String,
    pub mode: Mode,
    pub max_quantity: u32,
    /// ISO 3166-1 alpha-2 codes to collect a shipping address for; `None` collects none.
    pub shipping_countries: Option<Vec<String>>,
    /// The Stripe Product (`prod_…`), to check a promotion code's product restriction.
    pub product: Option<String>,
}

/// Slug → product. Slugs are `[A-Za-z0-9_-]`, so they are safe in logs and metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalogue(BTreeMap<String, Product>);

impl Catalogue {
    pub fn get(&self, slug: &str) -> Option<&Product> {
        self.0.get(slug)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

const FIELDS: [&str; 5] = [
    "price",
    "mode",
    "max_quantity",
    "shipping_countries",
    "product",
];

/// Parses and validates `PRODUCTS`. The error says what is wrong without quoting the
/// value (it ends up in `/healthz`'s reasoning and the logs only as the setting's name).
pub fn parse(raw: &str) -> Result<Catalogue, &'static str> {
    let value: Value = serde_json::from_str(raw).map_err(|_| "not valid JSON")?;
    let Value::Object(entries) = value else {
        return Err("not a JSON object of slug to product");
    };
    if entries.is_empty() {
        return Err("no products");
    }
    let mut products = BTreeMap::new();
    for (slug, entry) in entries {
        if !is_slug(&slug) {
            return Err("a slug is not 1 to 64 of a-z, 0-9 and -, starting with a letter or digit (the license server's rule)");
        }
        products.insert(slug, product(entry)?);
    }
    Ok(Catalogue(products))
}

fn product(entry: Value) -> Result<Product, &'static str> {
    let Value::Object(fields) = entry else {
        return Err("a product is not a JSON object");
    };
    if fields.keys().any(|k| !FIELDS.contains(&k.as_str())) {
        // A misspelt `shipping_countries` would silently ship without an address.
        return Err("a product has an unknown field");
    }
    let price = id_field(&fields, "price", "price_")
        .ok_or("a product's price is not a price_ id")?
        .ok_or("a product has no price")?;
    let mode = match fields.get("mode").and_then(Value::as_str) {
        Some("payment") => Mode::Payment,
        Some("subscription") => Mode::Subscription,
        _ => return Err("a product's mode is not payment or subscription"),
    };
    let max_quantity = fields
        .get("max_quantity")
        .and_then(Value::as_u64)
        .filter(|n| (1..=u64::from(MAX_QUANTITY)).contains(n))
        .ok_or("a product's max_quantity is not a whole number from 1 to 10000")?
        as u32;
    let shipping_countries = match fields.get("shipping_countries") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) if !items.is_empty() => Some(
            items
                .iter()
                .map(|c| c.as_str().filter(|c| is_country(c)).map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or("shipping_countries has an entry that is not a two-letter country code")?,
        ),
        Some(_) => return Err("shipping_countries is not a non-empty list of country codes"),
    };
    let product =
        id_field(&fields, "product", "prod_").ok_or("a product's product is not a prod_ id")?;
    Ok(Product {
        price,
        mode,
        max_quantity,
        shipping_countries,
        product,
    })
}

/// `Ok(None)` when absent, `None` when present but not a Stripe id with `prefix`.
fn id_field(fields: &Map<String, Value>, name: &str, prefix: &str) -> Option<Option<String>> {
    match fields.get(name) {
        None | Some(Value::Null) => Some(None),
        Some(Value::String(id)) if is_stripe_id(id, prefix) => Some(Some(id.clone())),
        Some(_) => None,
    }
}

fn is_stripe_id(id: &str, prefix: &str) -> bool {
    id.len() > prefix.len()
        && id.len() <= 255
        && id.starts_with(prefix)
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The license server's slug rule (`^[a-z0-9][a-z0-9-]*$`), at most 64 characters: the
/// catalogue's slug is the slug the license step sends, so a slug the server would
/// refuse makes `PRODUCTS` invalid at start instead of failing every purchase.
fn is_slug(slug: &str) -> bool {
    let lower_or_digit = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (1..=64).contains(&slug.len())
        && slug.bytes().next().is_some_and(lower_or_digit)
        && slug.bytes().all(|b| lower_or_digit(b) || b == b'-')
}

fn is_country(code: &str) -> bool {
    code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_follow_the_license_servers_rule() {
        for good in ["pro", "pro-2", "0day", "a"] {
            assert!(is_slug(good), "{good}");
        }
        for bad in ["Pro", "pro_2", "-pro", "", "pro.x", &"a".repeat(65)] {
            assert!(!is_slug(bad), "{bad}");
        }
    }

    const GOOD: &str = r#"{
        "pro": {"price": "price_1Pro", "mode": "payment", "max_quantity": 5,
                "shipping_countries": ["US", "GB"], "product": "prod_Pro"},
        "team-monthly": {"price": "price_1Team", "mode": "subscription", "max_quantity": 50}
    }"#;

    #[test]
    fn a_good_catalogue_parses_with_its_optional_fields() {
        let catalogue = parse(GOOD).unwrap();
        assert_eq!(catalogue.len(), 2);
        assert_eq!(
            catalogue.get("pro"),
            Some(&Product {
                price: "price_1Pro".into(),
                mode: Mode::Payment,
                max_quantity: 5,
                shipping_countries: Some(vec!["US".into(), "GB".into()]),
                product: Some("prod_Pro".into()),
            })
        );
        let team = catalogue.get("team-monthly").unwrap();
        assert_eq!(team.mode, Mode::Subscription);
        assert_eq!(team.shipping_countries, None);
        assert_eq!(team.product, None);
        assert_eq!(catalogue.get("enterprise"), None);
    }

    #[test]
    fn malformed_json_is_refused() {
        for raw in ["", "{", "{'pro': {}}", "[]", "\"pro\"", "{}"] {
            assert!(parse(raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn every_bad_entry_is_refused_with_a_reason_that_quotes_nothing() {
        let entry = |e: &str| format!(r#"{{"pro": {e}}}"#);
        let cases = [
            (
                entry(r#"{"price":"price_1","mode":"rent","max_quantity":1}"#),
                "mode",
            ),
            (
                entry(r#"{"price":"price_1","mode":"payment","max_quantity":0}"#),
                "max_quantity",
            ),
            (
                entry(r#"{"price":"price_1","mode":"payment","max_quantity":1.5}"#),
                "max_quantity",
            ),
            (
                entry(r#"{"price":"price_1","mode":"payment","max_quantity":-1}"#),
                "max_quantity",
            ),
            (
                entry(r#"{"price":"price_1","mode":"payment","max_quantity":10001}"#),
                "max_quantity",
            ),
            (
                entry(r#"{"price":"prod_1","mode":"payment","max_quantity":1}"#),
                "price",
            ),
            (entry(r#"{"mode":"payment","max_quantity":1}"#), "price"),
            (
                entry(r#"{"price":"price_1","mode":"payment","max_quantity":1,"amount":100}"#),
                "unknown field",
            ),
            (
                entry(
                    r#"{"price":"price_1","mode":"payment","max_quantity":1,"shipping_countries":["usa"]}"#,
                ),
                "country",
            ),
            (
                entry(
                    r#"{"price":"price_1","mode":"payment","max_quantity":1,"shipping_countries":[]}"#,
                ),
                "shipping_countries",
            ),
            (
                entry(
                    r#"{"price":"price_1","mode":"payment","max_quantity":1,"product":"price_1"}"#,
                ),
                "prod_",
            ),
            (entry(r#""price_1""#), "not a JSON object"),
            (
                r#"{"pro plan": {"price":"price_1","mode":"payment","max_quantity":1}}"#
                    .to_string(),
                "slug",
            ),
        ];
        for (raw, why) in cases {
            let error = parse(&raw).expect_err(&raw);
            assert!(error.contains(why), "{raw}: {error}");
            assert!(!error.contains("price_1") && !error.contains("pro plan"));
        }
    }
}
