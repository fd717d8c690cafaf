//! Compares two `-dump-vmstate` dumps (an older release's and a newer
//! one's) and lists every change that breaks migration between them, like
//! QEMU's `vmstate-static-checker.py`.

use serde_json::Value;

/// What a dump comparison found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Changes that break migration.
    pub errors: Vec<String>,
    /// Changes that are safe only under a condition (a new subsection must
    /// not be sent to the old release).
    pub notes: Vec<String>,
}

/// `old` and `new` are dumps: `{"machine": ..., "sections": {name: description}}`.
pub fn check(old: &Value, new: &Value) -> Report {
    let mut r = Report::default();
    if old["machine"] != new["machine"] {
        r.errors.push(format!(
            "machine types differ: {} and {}",
            old["machine"], new["machine"]
        ));
    }
    let (Some(os), Some(ns)) = (old["sections"].as_object(), new["sections"].as_object()) else {
        r.errors
            .push("not a vmstate dump: no \"sections\" object".into());
        return r;
    };
    for (name, od) in os {
        match ns.get(name) {
            None => r.errors.push(format!("section '{name}': removed")),
            Some(nd) => description(name, od, nd, &mut r),
        }
    }
    r
}

fn description(path: &str, old: &Value, new: &Value, r: &mut Report) {
    let num = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
    let (ov, nv) = (num(old, "version_id"), num(new, "version_id"));
    if nv > ov {
        r.errors.push(format!(
            "{path}: version_id raised from {ov} to {nv}: its streams cannot load into the older release (new state belongs in a subsection)"
        ));
    }
    if num(new, "minimum_version_id") > ov {
        r.errors.push(format!(
            "{path}: minimum_version_id {} is above the older release's version_id {ov}: its streams cannot load",
            num(new, "minimum_version_id")
        ));
    }
    let fields = |v: &Value| v["fields"].as_array().cloned().unwrap_or_default();
    let (of, nf) = (fields(old), fields(new));
    for o in &of {
        let name = o["field"].as_str().unwrap_or("?");
        match nf.iter().find(|n| n["field"] == o["field"]) {
            None => r.errors.push(format!("{path}: field '{name}' removed")),
            Some(n) => {
                if n["type"] != o["type"] {
                    r.errors.push(format!(
                        "{path}: field '{name}' changed type from {} to {}",
                        o["type"], n["type"]
                    ));
                }
                if n["size"] != o["size"] || n["array_len"] != o["array_len"] {
                    r.errors.push(format!(
                        "{path}: field '{name}' resized from {} to {}",
                        o["size"], n["size"]
                    ));
                }
                if n["count_field"] != o["count_field"] {
                    r.errors.push(format!(
                        "{path}: field '{name}' is counted by {} where it was by {}",
                        n["count_field"], o["count_field"]
                    ));
                }
                if let (Some(os), Some(ns)) = (o.get("struct"), n.get("struct")) {
                    description(&format!("{path}.{name}"), os, ns, r);
                }
            }
        }
    }
    // Order matters on the wire: the common fields must keep their order.
    let common: Vec<&Value> = nf
        .iter()
        .filter(|n| of.iter().any(|o| o["field"] == n["field"]))
        .map(|n| &n["field"])
        .collect();
    let old_order: Vec<&Value> = of
        .iter()
        .map(|o| &o["field"])
        .filter(|f| common.contains(f))
        .collect();
    if common != old_order {
        r.errors.push(format!("{path}: fields reordered"));
    }
    for n in nf
        .iter()
        .filter(|n| !of.iter().any(|o| o["field"] == n["field"]))
    {
        let since = n["version_id"].as_u64().unwrap_or(0);
        if since <= ov {
            r.errors.push(format!(
                "{path}: field '{}' added at version {since}, which the older release (version {ov}) reads without it",
                n["field"].as_str().unwrap_or("?")
            ));
        }
    }
    let subs = |v: &Value| v["subsections"].as_array().cloned().unwrap_or_default();
    let (osub, nsub) = (subs(old), subs(new));
    for o in &osub {
        let name = o["name"].as_str().unwrap_or("?");
        match nsub.iter().find(|n| n["name"] == o["name"]) {
            None => r.errors.push(format!(
                "{path}: subsection '{name}' removed (the older release may send it)"
            )),
            Some(n) => description(name, o, n, r),
        }
    }
    for n in nsub
        .iter()
        .filter(|n| !osub.iter().any(|o| o["name"] == n["name"]))
    {
        r.notes.push(format!(
            "{path}: subsection '{}' is new: the older release refuses it, so its needed() must be false for every state the older release can produce",
            n["name"].as_str().unwrap_or("?")
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dump(desc: Value) -> Value {
        json!({"machine": "pc-q35-8.0", "sections": {"dev": desc}})
    }

    fn dev(version: u64, min: u64, fields: Value, subs: Value) -> Value {
        json!({"name": "dev", "version_id": version, "minimum_version_id": min, "fields": fields, "subsections": subs})
    }

    #[test]
    fn same_dump_is_compatible() {
        let d = dump(dev(
            1,
            1,
            json!([{"field": "a", "type": "uint32", "size": 4, "version_id": 0}]),
            json!([]),
        ));
        assert_eq!(check(&d, &d), Report::default());
    }

    #[test]
    fn each_breaking_change_is_named() {
        let a = json!({"field": "a", "type": "uint32", "size": 4, "version_id": 0});
        let b = json!({"field": "b", "type": "uint8", "size": 1, "version_id": 0});
        let old = dump(dev(
            2,
            1,
            json!([a, b]),
            json!([{"name": "dev/s", "version_id": 1, "minimum_version_id": 1, "fields": []}]),
        ));
        let cases = [
            (
                json!({"machine": "pc-q35-8.0", "sections": {}}),
                "section 'dev': removed",
            ),
            (dump(dev(2, 1, json!([a]), json!([]))), "field 'b' removed"),
            (
                dump(dev(
                    2,
                    1,
                    json!([a, {"field": "b", "type": "uint16", "size": 2, "version_id": 0}]),
                    json!([]),
                )),
                "field 'b' changed type",
            ),
            (
                dump(dev(3, 1, json!([a, b]), json!([]))),
                "version_id raised from 2 to 3",
            ),
            (
                dump(dev(3, 3, json!([a, b]), json!([]))),
                "minimum_version_id 3",
            ),
            (
                dump(dev(2, 1, json!([b, a]), json!([]))),
                "fields reordered",
            ),
            (
                dump(dev(
                    2,
                    1,
                    json!([a, b, {"field": "c", "type": "uint8", "size": 1, "version_id": 0}]),
                    json!([]),
                )),
                "field 'c' added",
            ),
            (
                dump(dev(2, 1, json!([a, b]), json!([]))),
                "subsection 'dev/s' removed",
            ),
        ];
        for (new, want) in cases {
            let r = check(&old, &new);
            assert!(r.errors.iter().any(|e| e.contains(want)), "{want}: {r:?}");
        }
        // A new subsection is a note, not an error.
        let new = dump(dev(
            2,
            1,
            json!([a, b]),
            json!([{"name": "dev/s", "version_id": 1, "minimum_version_id": 1, "fields": []}, {"name": "dev/t", "version_id": 1, "minimum_version_id": 1, "fields": []}]),
        ));
        let r = check(&old, &new);
        assert!(r.errors.is_empty(), "{r:?}");
        assert!(r.notes[0].contains("'dev/t' is new"));
    }
}
