//! JSON bodies whose objects are objects. serde's derived structs also accept an array
//! of their fields in order (`[1, "tenant", …]`), which the API's description does not
//! allow, no client means, and a validator in front of Locality would not expect to
//! reach it; these helpers accept a JSON object only.

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// `deserialize_with` for a struct-valued field: a JSON object only.
pub fn object<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct ObjectVisitor<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
        type Value = T;
        fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
            formatter.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(MapAccessDeserializer::new(map))
        }
    }
    deserializer.deserialize_map(ObjectVisitor(PhantomData))
}

/// `deserialize_with` for a list of structs: an array of JSON objects only.
pub fn objects<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(bound = "T: Deserialize<'de>")]
    struct Item<T>(#[serde(deserialize_with = "object")] T);
    let items = Vec::<Item<T>>::deserialize(deserializer)?;
    Ok(items.into_iter().map(|Item(item)| item).collect())
}

/// Parses a JSON document that must be one object.
pub fn from_object_slice<T: DeserializeOwned>(bytes: &[u8]) -> serde_json::Result<T> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = object(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        n: u32,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        #[serde(deserialize_with = "object")]
        inner: Inner,
        #[serde(default, deserialize_with = "objects")]
        list: Vec<Inner>,
    }

    /// [`Outer`] without the helpers: what serde's derive alone accepts.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct PlainOuter {
        inner: Inner,
        #[serde(default)]
        list: Vec<Inner>,
    }

    #[test]
    fn objects_parse_and_arrays_standing_for_structs_are_refused_at_every_depth() {
        let parsed: Outer =
            from_object_slice(br#"{"inner": {"n": 1}, "list": [{"n": 2}]}"#).unwrap();
        assert_eq!(
            parsed,
            Outer {
                inner: Inner { n: 1 },
                list: vec![Inner { n: 2 }]
            }
        );
        // What serde's derive alone accepts: each is the same value as an array.
        for (body, derive_alone_accepts) in [
            (r#"[{"n": 1}, []]"#, true),
            (r#"{"inner": [1]}"#, true),
            (r#"{"inner": {"n": 1}, "list": [[2]]}"#, true),
            (r#"[]"#, false),
            (r#"{"inner": {"n": 1}, "unknown": 1}"#, false),
            (r#"{"inner": {"n": 1}} trailing"#, false),
        ] {
            assert_eq!(
                serde_json::from_str::<PlainOuter>(body).is_ok(),
                derive_alone_accepts,
                "{body}"
            );
            let refusal = from_object_slice::<Outer>(body.as_bytes()).unwrap_err();
            assert!(!refusal.to_string().is_empty(), "{body}");
        }
        let refusal = from_object_slice::<Outer>(br#"{"inner": [1]}"#).unwrap_err();
        assert!(
            refusal.to_string().contains("expected a JSON object"),
            "{refusal}"
        );
    }
}
