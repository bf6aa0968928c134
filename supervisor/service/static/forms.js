// A form per entry, built from its input schema (declared, or read off its signature
// by the worker): a field per property of an object schema, a JSON box otherwise.
// Values are checked here before anything is sent; what the entry then says is shown
// as text, the value as JSON, an error with the plugin's own traceback.

let fieldCounter = 0;

function textSpan(className, text) {
  const span = document.createElement("span");
  span.className = className;
  span.textContent = text;
  return span;
}

const isPlainObject = (value) => value !== null && typeof value === "object" && !Array.isArray(value);

// `call(args)` sends the call and returns the value or throws the API's error.
export function entryForm(entry, call) {
  const box = document.createElement("div");
  box.className = "entry";
  box.dataset.entry = entry.id;
  const head = document.createElement("div");
  head.className = "entry-head";
  head.append(textSpan("plugin-name", entry.name), textSpan("mono", entry.id));
  if (entry.timeout) head.append(textSpan("hint", `timeout ${entry.timeout} s`));
  box.append(head);
  if (entry.description) {
    const description = document.createElement("p");
    description.textContent = entry.description;
    box.append(description);
  }
  const form = document.createElement("form");
  form.noValidate = true; // our own checks, with messages that name the field
  const fields = schemaFields(entry.input_schema);
  for (const field of fields) form.append(field.element);
  const row = document.createElement("div");
  row.className = "call-row";
  const submit = document.createElement("button");
  submit.type = "submit";
  submit.textContent = "Call";
  row.append(submit);
  form.append(row);
  const outcome = document.createElement("pre");
  outcome.className = "outcome";
  outcome.hidden = true;
  outcome.setAttribute("role", "status");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    let args;
    try {
      args = collectArguments(fields);
    } catch (error) {
      return showOutcome(outcome, false, error.message);
    }
    submit.disabled = true;
    const began = performance.now();
    try {
      const value = await call(args);
      const ms = (performance.now() - began).toFixed(1);
      showOutcome(outcome, true, `ok in ${ms} ms\n${JSON.stringify(value, null, 2)}`);
    } catch (error) {
      const lines = [`${error.status ? `${error.status} ` : ""}${error.type}: ${error.message}`];
      const detail = error.detail || {};
      if (detail.remote_type) lines.push(`raised in the plugin: ${detail.remote_type}: ${detail.remote_message || ""}`);
      if (detail.traceback) lines.push("", detail.traceback);
      showOutcome(outcome, false, lines.join("\n"));
    } finally {
      submit.disabled = false;
    }
  });
  box.append(form, outcome);
  return box;
}

function showOutcome(element, ok, text) {
  element.hidden = false;
  element.className = `outcome ${ok ? "ok" : "failed"}`;
  element.textContent = text;
}

function schemaFields(schema) {
  if (!isPlainObject(schema) || !isPlainObject(schema.properties)) {
    return [jsonField("arguments", "Arguments (a JSON object)", "{}", { whole: true })];
  }
  const required = new Set(Array.isArray(schema.required) ? schema.required : []);
  const fields = [];
  for (const [name, property] of Object.entries(schema.properties)) {
    const spec = isPlainObject(property) ? property : {};
    const type = Array.isArray(spec.type) ? spec.type.find((t) => t !== "null") : spec.type;
    const needed = required.has(name);
    const label = `${name}${needed ? " *" : ""}`;
    const hasDefault = Object.prototype.hasOwnProperty.call(spec, "default");
    let field;
    if (Array.isArray(spec.enum) && spec.enum.length) field = enumField(name, label, spec.enum, hasDefault ? spec.default : undefined, needed);
    else if (type === "boolean" && (needed || hasDefault)) field = checkField(name, label, spec.default === true);
    else if (type === "boolean") field = enumField(name, label, [true, false], undefined, false); // optional: may stay unset
    else if (type === "integer" || type === "number") field = numberField(name, label, type, hasDefault ? spec.default : "");
    else if (type === "string") field = textField(name, label, hasDefault ? spec.default : "");
    else field = jsonField(name, `${label} (JSON)`, hasDefault ? JSON.stringify(spec.default) : "", {});
    field.required = needed;
    if (spec.description) field.element.append(textSpan("hint", spec.description));
    fields.push(field);
  }
  if (schema.additionalProperties !== false) {
    // The entry takes keywords beyond those named (a **kwargs): let them be passed too.
    fields.push(jsonField("more", "More arguments (a JSON object, optional)", "", { extra: true }));
  }
  return fields;
}

function fieldShell(label, control, className = "field") {
  const element = document.createElement("div");
  element.className = className;
  control.id = `field-${++fieldCounter}`;
  const caption = document.createElement("label");
  caption.htmlFor = control.id;
  caption.textContent = label;
  if (className.includes("check")) element.append(control, caption);
  else element.append(caption, control);
  return element;
}

function textField(name, label, value) {
  const input = document.createElement("input");
  input.type = "text";
  input.name = name;
  input.value = value ?? "";
  return { name, element: fieldShell(label, input), read: () => (input.value === "" ? undefined : input.value) };
}

function numberField(name, label, type, value) {
  const input = document.createElement("input");
  input.type = "number";
  input.name = name;
  input.step = type === "integer" ? "1" : "any";
  input.value = value ?? "";
  return {
    name,
    element: fieldShell(label, input),
    read: () => {
      if (input.validity.badInput) throw new Error(`${name} is not a number`);
      if (input.value.trim() === "") return undefined;
      const number = Number(input.value);
      if (!Number.isFinite(number)) throw new Error(`${name} is not a number`);
      if (type === "integer" && !Number.isInteger(number)) throw new Error(`${name} must be a whole number`);
      if (type === "integer" && !Number.isSafeInteger(number)) {
        throw new Error(`${name} is beyond what a browser can send exactly (±2^53); call the API directly for it`);
      }
      return number;
    },
  };
}

function checkField(name, label, checked) {
  const input = document.createElement("input");
  input.type = "checkbox";
  input.name = name;
  input.checked = checked;
  return { name, element: fieldShell(label, input, "field check"), read: () => input.checked };
}

const NOT_SET = "";

function enumField(name, label, options, value, needed) {
  const select = document.createElement("select");
  select.name = name;
  if (!needed) {
    const unset = document.createElement("option");
    unset.value = NOT_SET;
    unset.textContent = "(not set)";
    select.append(unset);
  }
  for (const option of options) {
    const element = document.createElement("option");
    element.value = JSON.stringify(option);
    element.textContent = typeof option === "string" ? option : JSON.stringify(option);
    if (value !== undefined && JSON.stringify(option) === JSON.stringify(value)) element.selected = true;
    select.append(element);
  }
  return { name, element: fieldShell(label, select), read: () => (select.value === NOT_SET ? undefined : JSON.parse(select.value)) };
}

function jsonField(name, label, value, { whole = false, extra = false }) {
  const area = document.createElement("textarea");
  area.name = name;
  area.value = value;
  area.spellcheck = false;
  area.className = "mono";
  let element = fieldShell(label, area);
  if (extra) {
    // Folded: most entries end in `**_` and take nothing more, but some do (`**params`).
    element = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = "More arguments";
    element.append(summary, fieldShell(label, area));
  }
  return {
    name,
    whole,
    extra,
    element,
    read: () => {
      if (area.value.trim() === "") return undefined;
      try {
        return JSON.parse(area.value);
      } catch (error) {
        throw new Error(`${whole || extra ? "the arguments are" : `${name} is`} not valid JSON: ${error.message}`);
      }
    },
  };
}

function asArgumentsObject(value) {
  if (!isPlainObject(value)) throw new Error('the arguments must be a JSON object, such as {"key": "value"}');
  return value;
}

// The arguments object; a property named __proto__ stays a property (no prototype to set).
export function collectArguments(fields) {
  const args = Object.create(null);
  for (const field of fields) {
    const value = field.read();
    if (value === undefined) {
      if (field.required) throw new Error(`${field.name} is required`);
      continue;
    }
    if (field.whole || field.extra) {
      for (const [key, item] of Object.entries(asArgumentsObject(value))) {
        if (field.extra && key in args) throw new Error(`${key} is given twice: in its field and in "more arguments"`);
        args[key] = item;
      }
    } else {
      args[field.name] = value;
    }
  }
  return args;
}
