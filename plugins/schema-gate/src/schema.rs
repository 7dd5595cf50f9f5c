//! The JSON Schema subset the gate enforces, compiled once from the exchange argument.
//!
//! Keywords: `type` (`string`, `number`, `integer`, `boolean`, `object`, `array`, `null`,
//! or a list of them), `enum`, `required`, `properties`, `additionalProperties` (a
//! boolean), `items`, `minItems`, `maxItems`, `minimum`, `maximum`, `minLength`,
//! `maxLength` (in characters); `title`, `description` and `$schema` are ignored. Any
//! other keyword is refused, so a schema never silently checks less than it says.

use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    String,
    Number,
    Integer,
    Boolean,
    Object,
    Array,
    Null,
}

impl Type {
    fn parse(v: &Value) -> Result<Type, String> {
        Ok(match v.as_str() {
            Some("string") => Type::String,
            Some("number") => Type::Number,
            Some("integer") => Type::Integer,
            Some("boolean") => Type::Boolean,
            Some("object") => Type::Object,
            Some("array") => Type::Array,
            Some("null") => Type::Null,
            Some(other) => return Err(format!("unknown type `{other}`")),
            None => return Err(format!("a type must be a string, not {}", kind(v))),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Type::String => "string",
            Type::Number => "number",
            Type::Integer => "integer",
            Type::Boolean => "boolean",
            Type::Object => "object",
            Type::Array => "array",
            Type::Null => "null",
        }
    }

    fn accepts(self, v: &Value) -> bool {
        match self {
            Type::String => v.is_string(),
            Type::Number => v.is_number(),
            // 1.0 counts as an integer, as in JSON Schema.
            Type::Integer => {
                v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            Type::Boolean => v.is_boolean(),
            Type::Object => v.is_object(),
            Type::Array => v.is_array(),
            Type::Null => v.is_null(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Schema {
    types: Vec<Type>,
    enumeration: Option<Vec<Value>>,
    required: Vec<String>,
    properties: Vec<(String, Schema)>,
    additional_properties: bool,
    items: Option<Box<Schema>>,
    min_items: Option<u64>,
    max_items: Option<u64>,
    minimum: Option<f64>,
    maximum: Option<f64>,
    min_length: Option<u64>,
    max_length: Option<u64>,
}

/// What kind of JSON value `v` is, for messages (not the value: formatting floats would
/// double the plugin's size).
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn count(v: &Value, keyword: &str) -> Result<u64, String> {
    v.as_u64().ok_or_else(|| {
        format!(
            "`{keyword}` must be a non-negative integer, not {}",
            kind(v)
        )
    })
}

fn number(v: &Value, keyword: &str) -> Result<f64, String> {
    v.as_f64()
        .ok_or_else(|| format!("`{keyword}` must be a number, not {}", kind(v)))
}

impl Schema {
    /// Compiles a schema; `at` is its location, for error messages.
    pub fn compile(v: &Value, at: &str) -> Result<Schema, String> {
        let Value::Object(map) = v else {
            return Err(format!(
                "the schema at {at} must be an object, not {}",
                kind(v)
            ));
        };
        Schema::compile_map(map, at).map_err(|e| format!("{e} (schema at {at})"))
    }

    fn compile_map(map: &Map<String, Value>, at: &str) -> Result<Schema, String> {
        let mut s = Schema {
            additional_properties: true,
            ..Schema::default()
        };
        for (keyword, v) in map {
            match keyword.as_str() {
                "type" => {
                    s.types = match v {
                        Value::Array(list) => {
                            list.iter().map(Type::parse).collect::<Result<_, _>>()?
                        }
                        one => vec![Type::parse(one)?],
                    }
                }
                "enum" => match v {
                    Value::Array(list) => s.enumeration = Some(list.clone()),
                    _ => return Err(format!("`enum` must be a list, not {}", kind(v))),
                },
                "required" => {
                    s.required = v
                        .as_array()
                        .and_then(|list| {
                            list.iter()
                                .map(|n| n.as_str().map(str::to_owned))
                                .collect::<Option<Vec<_>>>()
                        })
                        .ok_or_else(|| {
                            format!("`required` must be a list of names, not {}", kind(v))
                        })?
                }
                "properties" => {
                    let Value::Object(props) = v else {
                        return Err(format!("`properties` must be an object, not {}", kind(v)));
                    };
                    for (name, sub) in props {
                        let sub = Schema::compile(sub, &format!("{at}.{name}"))?;
                        s.properties.push((name.clone(), sub));
                    }
                }
                "additionalProperties" => {
                    s.additional_properties = v.as_bool().ok_or_else(|| {
                        format!(
                            "`additionalProperties` must be true or false, not {}",
                            kind(v)
                        )
                    })?
                }
                "items" => s.items = Some(Box::new(Schema::compile(v, &format!("{at}[]"))?)),
                "minItems" => s.min_items = Some(count(v, keyword)?),
                "maxItems" => s.max_items = Some(count(v, keyword)?),
                "minLength" => s.min_length = Some(count(v, keyword)?),
                "maxLength" => s.max_length = Some(count(v, keyword)?),
                "minimum" => s.minimum = Some(number(v, keyword)?),
                "maximum" => s.maximum = Some(number(v, keyword)?),
                "title" | "description" | "$schema" => {}
                other => {
                    return Err(format!(
                        "unsupported keyword `{other}` (supported: type, enum, required, \
                         properties, additionalProperties, items, minItems, maxItems, \
                         minimum, maximum, minLength, maxLength)"
                    ));
                }
            }
        }
        Ok(s)
    }

    /// Checks `v`; the error names the first offending location (`$` is the body).
    pub fn validate(&self, v: &Value, at: &mut String) -> Result<(), String> {
        if !self.types.is_empty() && !self.types.iter().any(|t| t.accepts(v)) {
            let names: Vec<&str> = self.types.iter().map(|t| t.name()).collect();
            return Err(format!("{at}: expected {}", names.join(" or ")));
        }
        if let Some(allowed) = &self.enumeration
            && !allowed.contains(v)
        {
            return Err(format!("{at}: not one of the allowed values"));
        }
        match v {
            Value::Object(map) => {
                if let Some(missing) = self.required.iter().find(|n| !map.contains_key(*n)) {
                    return Err(format!("{at}: missing required field `{missing}`"));
                }
                for (name, sub) in &self.properties {
                    if let Some(field) = map.get(name) {
                        let len = at.len();
                        at.push('.');
                        at.push_str(name);
                        sub.validate(field, at)?;
                        at.truncate(len);
                    }
                }
                if !self.additional_properties
                    && let Some(extra) = map
                        .keys()
                        .find(|k| !self.properties.iter().any(|(n, _)| n == *k))
                {
                    return Err(format!("{at}: unexpected field `{extra}`"));
                }
            }
            Value::Array(list) => {
                let n = list.len() as u64;
                if let Some(min) = self.min_items.filter(|&min| n < min) {
                    return Err(format!("{at}: fewer items than {min}"));
                }
                if let Some(max) = self.max_items.filter(|&max| n > max) {
                    return Err(format!("{at}: more items than {max}"));
                }
                if let Some(items) = &self.items {
                    for (i, item) in list.iter().enumerate() {
                        let len = at.len();
                        at.push_str(&format!("[{i}]"));
                        items.validate(item, at)?;
                        at.truncate(len);
                    }
                }
            }
            Value::String(s) => {
                let n = s.chars().count() as u64;
                if let Some(min) = self.min_length.filter(|&min| n < min) {
                    return Err(format!("{at}: shorter than {min} characters"));
                }
                if let Some(max) = self.max_length.filter(|&max| n > max) {
                    return Err(format!("{at}: longer than {max} characters"));
                }
            }
            Value::Number(num) => {
                // Always a finite f64: serde_json has no NaN or infinities.
                let x = num.as_f64().unwrap_or(0.0);
                if self.minimum.is_some_and(|min| x < min) {
                    return Err(format!("{at}: below the minimum"));
                }
                if self.maximum.is_some_and(|max| x > max) {
                    return Err(format!("{at}: above the maximum"));
                }
            }
            Value::Bool(_) | Value::Null => {}
        }
        Ok(())
    }
}
