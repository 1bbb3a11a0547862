//! The golden source's provisioners, in the template's order, read from
//! images/common/packer/image.pkr.hcl itself with the bake's var file: what the rehearsal
//! runs is what Packer would run, and a provisioner added to the template is rehearsed too.

use std::path::Path;

use hcl::eval::{Context, Evaluate, FuncArgs, FuncDef, ParamType};
use hcl::{Block, Body, Expression, Map, Value};

/// The source the rehearsal stands in for.
pub const GOLDEN: &str = "amazon-ebs.golden";

/// Packer's shell provisioner defaults.
const DEFAULT_EXECUTE: &str = "chmod +x {{.Path}}; {{.Vars}} {{.Path}}";
const DEFAULT_SHEBANG: &str = "/bin/sh -e";

#[derive(Debug, Clone)]
pub enum Step {
    /// A `file` provisioner: upload `sources` (a trailing slash: a directory's contents).
    Upload {
        sources: Vec<String>,
        destination: String,
    },
    /// A `shell` provisioner: each script (an `inline` list becomes one script under
    /// `inline_shebang`), run through `execute_command` with `environment_vars`.
    Shell {
        scripts: Vec<Script>,
        environment_vars: Vec<String>,
        execute_command: String,
    },
}

#[derive(Debug, Clone)]
pub struct Script {
    /// For messages: the script's path, or `inline`.
    pub name: String,
    pub text: String,
}

/// The golden source's steps. `vars` is the var file (a JSON object); the template's
/// variable defaults fill in the rest.
pub fn golden_steps(template_dir: &Path, vars: &serde_json::Value) -> Vec<Step> {
    let body = parse(&template_dir.join("image.pkr.hcl"));
    let ctx = context(template_dir, vars, &body);
    let build = body
        .blocks()
        .find(|b| b.identifier() == "build")
        .expect("image.pkr.hcl has a build block");
    build
        .body()
        .blocks()
        .filter(|b| b.identifier() == "provisioner")
        .filter(|b| applies_to_golden(b, &ctx))
        .map(|b| step(b, &ctx, template_dir))
        .collect()
}

fn parse(path: &Path) -> Body {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    hcl::parse(&text).unwrap_or_else(|e| panic!("{} is not HCL: {e}", path.display()))
}

fn context<'a>(template_dir: &Path, vars: &serde_json::Value, body: &Body) -> Context<'a> {
    let mut var = Map::new();
    let variables = parse(&template_dir.join("variables.pkr.hcl"));
    let empty = Context::new();
    for block in variables.blocks().filter(|b| b.identifier() == "variable") {
        let name = block.labels()[0].as_str().to_string();
        if let Some(default) = attr(block, "default") {
            if let Ok(value) = default.evaluate(&empty) {
                var.insert(name, value);
            }
        }
    }
    let Value::Object(given) = hcl::to_value(vars).unwrap() else {
        panic!("the var file is not a JSON object");
    };
    var.extend(given);

    let mut ctx = Context::new();
    ctx.declare_var("var", Value::Object(var));
    ctx.declare_var(
        "path",
        Value::Object(Map::from_iter([(
            "root".to_string(),
            Value::from(template_dir.display().to_string()),
        )])),
    );
    declare_functions(&mut ctx);

    // Locals may refer to each other in any order: evaluate until nothing more resolves.
    // Those needing a function this file does not define (timestamp, formatdate ...) stay
    // out; a provisioner that used one would fail to evaluate, naming it.
    let pending: Vec<(String, Expression)> = body
        .blocks()
        .filter(|b| b.identifier() == "locals")
        .flat_map(|b| b.body().attributes())
        .map(|a| (a.key().to_string(), a.expr().clone()))
        .collect();
    let mut locals = Map::new();
    let mut pending = pending;
    loop {
        let before = pending.len();
        pending.retain(|(name, expr)| match expr.evaluate(&ctx) {
            Ok(value) => {
                locals.insert(name.clone(), value);
                false
            }
            Err(_) => true,
        });
        ctx.declare_var("local", Value::Object(locals.clone()));
        if pending.len() == before {
            break;
        }
    }
    ctx
}

/// The few Packer functions the provisioners' expressions use.
fn declare_functions(ctx: &mut Context) {
    fn concat(args: FuncArgs) -> Result<Value, String> {
        let mut all = Vec::new();
        for arg in args.iter() {
            all.extend(arg.as_array().ok_or("concat takes lists")?.iter().cloned());
        }
        Ok(Value::Array(all))
    }
    fn upper(args: FuncArgs) -> Result<Value, String> {
        Ok(Value::from(
            args[0].as_str().unwrap_or_default().to_uppercase(),
        ))
    }
    fn lookup(args: FuncArgs) -> Result<Value, String> {
        let map = args[0].as_object().ok_or("lookup takes a map")?;
        let key = args[1].as_str().ok_or("lookup takes a string key")?;
        Ok(map.get(key).cloned().unwrap_or_else(|| args[2].clone()))
    }
    fn keys(args: FuncArgs) -> Result<Value, String> {
        let map = args[0].as_object().ok_or("keys takes a map")?;
        Ok(Value::Array(map.keys().cloned().map(Value::from).collect()))
    }
    fn sort(args: FuncArgs) -> Result<Value, String> {
        let mut items: Vec<String> = args[0]
            .as_array()
            .ok_or("sort takes a list")?
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .collect();
        items.sort();
        Ok(Value::Array(items.into_iter().map(Value::from).collect()))
    }
    fn join(args: FuncArgs) -> Result<Value, String> {
        let separator = args[0].as_str().ok_or("join takes a separator")?;
        let items = args[1].as_array().ok_or("join takes a list")?;
        let words: Vec<&str> = items
            .iter()
            .map(|v| v.as_str().ok_or("join takes a list of strings"))
            .collect::<Result<_, _>>()?;
        Ok(Value::from(words.join(separator)))
    }
    let any = || ParamType::Any;
    ctx.declare_func(
        "concat",
        FuncDef::builder().variadic_param(any()).build(concat),
    );
    ctx.declare_func("upper", FuncDef::new(upper, [ParamType::String]));
    ctx.declare_func("lookup", FuncDef::new(lookup, [any(), any(), any()]));
    ctx.declare_func("keys", FuncDef::new(keys, [any()]));
    ctx.declare_func("sort", FuncDef::new(sort, [any()]));
    ctx.declare_func("join", FuncDef::new(join, [any(), any()]));
}

fn attr<'b>(block: &'b Block, name: &str) -> Option<&'b Expression> {
    block
        .body()
        .attributes()
        .find(|a| a.key() == name)
        .map(|a| a.expr())
}

fn eval(block: &Block, name: &str, ctx: &Context) -> Option<Value> {
    attr(block, name).map(|expr| {
        expr.evaluate(ctx).unwrap_or_else(|e| {
            panic!(
                "provisioner {:?}: cannot evaluate `{name}`: {e}",
                block.labels()
            )
        })
    })
}

fn strings(value: Value) -> Vec<String> {
    match value {
        Value::Array(items) => items
            .into_iter()
            .map(|v| v.as_str().expect("a list of strings").to_string())
            .collect(),
        Value::String(s) => vec![s],
        other => panic!("expected a list of strings, got {other}"),
    }
}

fn applies_to_golden(block: &Block, ctx: &Context) -> bool {
    let only = eval(block, "only", ctx).map(strings);
    let except = eval(block, "except", ctx).map(strings).unwrap_or_default();
    only.is_none_or(|only| only.iter().any(|s| s == GOLDEN)) && !except.iter().any(|s| s == GOLDEN)
}

fn step(block: &Block, ctx: &Context, template_dir: &Path) -> Step {
    let kind = block.labels()[0].as_str();
    match kind {
        "file" => {
            let mut sources = eval(block, "sources", ctx).map(strings).unwrap_or_default();
            sources.extend(eval(block, "source", ctx).map(strings).unwrap_or_default());
            let direction = eval(block, "direction", ctx).map(strings);
            assert!(
                direction.is_none_or(|d| d == ["upload"]),
                "the rehearsal uploads only"
            );
            Step::Upload {
                sources,
                destination: eval(block, "destination", ctx)
                    .and_then(|v| v.as_str().map(str::to_string))
                    .expect("a file provisioner has a destination"),
            }
        }
        "shell" => {
            let mut scripts = Vec::new();
            if let Some(lines) = eval(block, "inline", ctx).map(strings) {
                let shebang = eval(block, "inline_shebang", ctx)
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| DEFAULT_SHEBANG.to_string());
                // As Packer writes it: the shebang, then one command per line.
                let mut text = format!("#!{shebang}\n");
                for line in lines {
                    text.push_str(&line);
                    text.push('\n');
                }
                scripts.push(Script {
                    name: "inline".to_string(),
                    text,
                });
            }
            let mut paths = eval(block, "scripts", ctx).map(strings).unwrap_or_default();
            paths.extend(eval(block, "script", ctx).map(strings).unwrap_or_default());
            for path in paths {
                let resolved = template_dir.join(&path);
                let text = std::fs::read_to_string(&resolved)
                    .unwrap_or_else(|e| panic!("{}: {e}", resolved.display()));
                let name = Path::new(&path)
                    .canonicalize()
                    .map(|p| p.display().to_string())
                    .unwrap_or(path);
                scripts.push(Script { name, text });
            }
            Step::Shell {
                scripts,
                environment_vars: eval(block, "environment_vars", ctx)
                    .map(strings)
                    .unwrap_or_default(),
                execute_command: eval(block, "execute_command", ctx)
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| DEFAULT_EXECUTE.to_string()),
            }
        }
        other => panic!(
            "the rehearsal cannot run a `{other}` provisioner; teach rehearsal_kit/template.rs"
        ),
    }
}
