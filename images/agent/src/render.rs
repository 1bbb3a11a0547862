//! Renders a role's templates in memory. Nothing here touches the output directories, so a
//! failure at any point leaves every previously written file as it was.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use minijinja::{AutoEscape, Environment, UndefinedBehavior};

use crate::context::Context;
use crate::error::AgentError;
use crate::spec::{rooted, RoleSpec};

/// One output file, ready to be written.
#[derive(Clone, PartialEq, Eq)]
pub struct RenderedFile {
    /// Where it goes, already prefixed with the root.
    pub path: PathBuf,
    pub contents: String,
    pub mode: u32,
    /// Applied only when the agent runs as root.
    pub owner: Option<String>,
    pub group: Option<String>,
    /// Units to restart in watch mode when this file changes.
    pub services: Vec<String>,
    /// A secret: its contents are never printed or logged.
    pub sensitive: bool,
}

impl fmt::Debug for RenderedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let contents: &dyn fmt::Debug = if self.sensitive {
            &"<redacted>"
        } else {
            &self.contents
        };
        f.debug_struct("RenderedFile")
            .field("path", &self.path)
            .field("contents", contents)
            .field("mode", &format_args!("{:04o}", self.mode))
            .field("owner", &self.owner)
            .field("group", &self.group)
            .field("services", &self.services)
            .field("sensitive", &self.sensitive)
            .finish()
    }
}

/// What rendering produced: the files, and each warning a template raised with
/// `{{ warn("...") }}` (a config that works but that an operator should hear about).
#[derive(Debug, Default)]
pub struct Rendered {
    pub files: Vec<RenderedFile>,
    /// (output path, message), in template order.
    pub warnings: Vec<(PathBuf, String)>,
}

/// Renders every `[[files]]` entry of `spec` with `context`.
pub fn render_files(spec: &RoleSpec, context: &Context) -> Result<Vec<RenderedFile>, AgentError> {
    render_with_warnings(spec, context).map(|rendered| rendered.files)
}

/// [`render_files`], keeping the templates' warnings. Templates never see a secret's value
/// (only the path of its file), so no rendered file is sensitive.
pub fn render_with_warnings(spec: &RoleSpec, context: &Context) -> Result<Rendered, AgentError> {
    let raised = Arc::new(Mutex::new(Vec::new()));
    let env = environment(raised.clone());
    let mut rendered = Rendered::default();
    for file in &spec.files {
        let template_path = spec.dir.join(&file.template);
        let name = file.template.display().to_string();
        let source = std::fs::read_to_string(&template_path)
            .map_err(|e| AgentError::spec(&template_path, format!("cannot read it: {e}")))?;
        let contents =
            env.render_named_str(&name, &source, context)
                .map_err(|e| AgentError::Template {
                    template: name,
                    message: describe(&e),
                })?;
        let path = rooted(&context.root, &file.path);
        let messages: Vec<String> = match raised.lock() {
            Ok(mut messages) => messages.drain(..).collect(),
            Err(poisoned) => poisoned.into_inner().drain(..).collect(),
        };
        rendered
            .warnings
            .extend(messages.into_iter().map(|m| (path.clone(), m)));
        rendered.files.push(RenderedFile {
            path,
            contents,
            mode: file.mode.0,
            owner: file.owner.clone(),
            group: file.group.clone(),
            services: file.services.clone(),
            sensitive: false,
        });
    }
    Ok(rendered)
}

/// Strict about undefined variables, literal output (no HTML/JSON escaping: values are
/// validated instead), and trailing newlines kept, as config files expect. `warn(message)`
/// renders nothing and hands `message` to `raised`.
fn environment(raised: Arc<Mutex<Vec<String>>>) -> Environment<'static> {
    let mut env = Environment::new();
    env.add_function("warn", move |message: String| {
        match raised.lock() {
            Ok(mut messages) => messages.push(message),
            Err(poisoned) => poisoned.into_inner().push(message),
        }
        String::new()
    });
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_keep_trailing_newline(true);
    env
}

/// minijinja's Display omits the cause chain and line; keep both in one line.
fn describe(error: &minijinja::Error) -> String {
    let mut message = error.to_string();
    if let Some(line) = error.line() {
        message = format!("line {line}: {message}");
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}
