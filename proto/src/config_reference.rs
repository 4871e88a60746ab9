//! The configuration reference, generated from the config types' JSON Schema (schemars
//! reads the same serde attributes the parser obeys, and the doc comments), so that no
//! key the configuration accepts can be missing from docs/configuration.md.

use serde_json::{Map, Value};

use crate::config::Config;

/// One table of the configuration, such as `tenants.ID.quota`, and the keys it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Path from the top: names of tables, and placeholders (`ID`, `NAME`, `REGION`) where
    /// the configuration chooses the name.
    pub path: Vec<String>,
    pub keys: Vec<Key>,
    /// Keys of this section that are sections themselves (or maps of them).
    pub tables: Vec<String>,
}

impl Section {
    /// Every key the section accepts: its values and its tables.
    pub fn accepted(&self) -> Vec<&str> {
        let mut accepted: Vec<&str> = self.keys.iter().map(|key| key.name.as_str()).collect();
        accepted.extend(self.tables.iter().map(String::as_str));
        accepted.sort_unstable();
        accepted
    }
}

/// One key of a section that holds a value rather than another section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub name: String,
    /// A short type, such as `integer`, `string or none`, `list of strings`.
    pub kind: String,
    /// The default as TOML would spell it; `None` for a key that must be given.
    pub default: Option<String>,
    pub description: String,
}

/// Names a placeholder for the keys of a map, by what the map holds.
fn placeholder(map_name: &str) -> &'static str {
    match map_name {
        "presets" => "NAME",
        "stores" => "REGION",
        _ => "ID",
    }
}

/// Every section of the configuration, from the top, with the keys each accepts.
pub fn sections() -> Vec<Section> {
    let schema = serde_json::to_value(schemars::schema_for!(Config)).expect("a schema is JSON");
    let definitions = schema
        .get("$defs")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut sections = Vec::new();
    walk(&schema, Vec::new(), &definitions, &mut sections);
    sections
}

fn walk(
    object: &Value,
    path: Vec<String>,
    definitions: &Map<String, Value>,
    sections: &mut Vec<Section>,
) {
    let Some(properties) = object.get("properties").and_then(Value::as_object) else {
        return;
    };
    let mut section = Section {
        path: path.clone(),
        keys: Vec::new(),
        tables: Vec::new(),
    };
    let required: Vec<&str> = object
        .get("required")
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut nested = Vec::new();
    for (name, property) in properties {
        let target = resolve(property, definitions);
        let mut inner = path.clone();
        inner.push(name.clone());
        if target.get("properties").is_some() {
            nested.push((inner, target));
        } else if let Some(values) =
            map_values(&target, definitions).filter(|values| values.get("properties").is_some())
        {
            inner.push(placeholder(name).to_string());
            nested.push((inner, values));
        } else {
            let required = required.contains(&name.as_str());
            let key = leaf(name, property, target, required, definitions);
            section.keys.push(key);
            continue;
        }
        section.tables.push(name.clone());
    }
    sections.push(section);
    for (inner, target) in nested {
        walk(&target, inner, definitions, sections);
    }
}

/// What a property is, following `$ref` and an optional's `anyOf [X, null]`.
fn resolve(property: &Value, definitions: &Map<String, Value>) -> Value {
    if let Some(reference) = property.get("$ref").and_then(Value::as_str) {
        let name = reference.trim_start_matches("#/$defs/");
        return resolve(&definitions[name], definitions);
    }
    if let Some(choices) = property.get("anyOf").and_then(Value::as_array) {
        let not_null: Vec<&Value> = choices
            .iter()
            .filter(|choice| choice.get("type").and_then(Value::as_str) != Some("null"))
            .collect();
        if let [only] = not_null.as_slice() {
            return resolve(only, definitions);
        }
    }
    property.clone()
}

/// The schema of a map's values, when the property is a map with named entries.
fn map_values(target: &Value, definitions: &Map<String, Value>) -> Option<Value> {
    let values = target.get("additionalProperties")?;
    values.is_object().then(|| resolve(values, definitions))
}

fn leaf(
    name: &str,
    property: &Value,
    target: Value,
    required: bool,
    definitions: &Map<String, Value>,
) -> Key {
    let description = property
        .get("description")
        .or_else(|| target.get("description"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let optional = is_nullable(property) || is_nullable(&target);
    let mut kind = kind_of(&target, definitions);
    let default = match property.get("default") {
        Some(Value::Null) => Some("none".to_string()),
        Some(value) => Some(toml_spelling(value)),
        None if required => None,
        // Left out when empty (skip_serializing_if), so the schema shows no default.
        None if kind.starts_with("list") => Some("[]".to_string()),
        None if kind.starts_with("table") => Some("{}".to_string()),
        None => Some("none".to_string()),
    };
    if optional && !kind.ends_with("or none") {
        kind.push_str(" or none");
    }
    Key {
        name: name.to_string(),
        kind,
        default,
        description,
    }
}

fn is_nullable(schema: &Value) -> bool {
    match schema.get("type") {
        Some(Value::Array(types)) => types.iter().any(|kind| kind == "null"),
        _ => schema
            .get("anyOf")
            .and_then(Value::as_array)
            .is_some_and(|choices| {
                choices
                    .iter()
                    .any(|c| c.get("type") == Some(&"null".into()))
            }),
    }
}

fn kind_of(schema: &Value, definitions: &Map<String, Value>) -> String {
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return values
            .iter()
            .map(toml_spelling)
            .collect::<Vec<_>>()
            .join(" | ");
    }
    let base = match schema.get("type") {
        Some(Value::String(kind)) => kind.clone(),
        Some(Value::Array(kinds)) => kinds
            .iter()
            .filter_map(Value::as_str)
            .find(|kind| *kind != "null")
            .unwrap_or("value")
            .to_string(),
        _ => "value".to_string(),
    };
    match base.as_str() {
        "array" => {
            let items = schema
                .get("items")
                .map(|items| resolve(items, definitions))
                .unwrap_or(Value::Null);
            if items.get("properties").is_some() {
                "list of tables".to_string()
            } else {
                format!("list of {}s", kind_of(&items, definitions))
            }
        }
        "object" => {
            let values = schema
                .get("additionalProperties")
                .map(|values| resolve(values, definitions))
                .unwrap_or(Value::Null);
            format!("table of {}s", kind_of(&values, definitions))
        }
        "number" => "number".to_string(),
        other => other.to_string(),
    }
}

/// A JSON default as TOML spells it, with byte sizes also in binary units.
fn toml_spelling(value: &Value) -> String {
    match value {
        Value::String(text) => format!("{text:?}"),
        Value::Array(items) if items.is_empty() => "[]".to_string(),
        Value::Object(entries) if entries.is_empty() => "{}".to_string(),
        other => other.to_string(),
    }
}

fn with_binary_units(key: &str, default: &str) -> String {
    const MIB: u64 = 1 << 20;
    let Ok(bytes) = default.parse::<u64>() else {
        return default.to_string();
    };
    let sized = key.ends_with("_bytes") || key.ends_with("memory_budget");
    if sized && bytes >= MIB && bytes % MIB == 0 {
        match bytes / MIB {
            mebibytes if mebibytes % 1024 == 0 => format!("{bytes} ({} GiB)", mebibytes / 1024),
            mebibytes => format!("{bytes} ({mebibytes} MiB)"),
        }
    } else if sized && bytes >= 1024 && bytes % 1024 == 0 {
        format!("{bytes} ({} KiB)", bytes / 1024)
    } else {
        default.to_string()
    }
}

/// The reference as a Markdown table: one row per key, in the order of the sections.
pub fn markdown() -> String {
    let mut table = String::from("| key | type | default | meaning |\n|---|---|---|---|\n");
    for section in sections() {
        for key in &section.keys {
            let mut path = section.path.clone();
            path.push(key.name.clone());
            let default = match &key.default {
                Some(default) => format!("`{}`", with_binary_units(&key.name, default)),
                None => "required".to_string(),
            };
            table.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                path.join("."),
                escape(&key.kind),
                escape(&default),
                escape(&key.description),
            ));
        }
    }
    table
}

fn escape(cell: &str) -> String {
    cell.replace('|', "\\|")
}
