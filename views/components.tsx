import type { PropsWithChildren } from "@kitajs/html";
import { utc } from "./format.ts";

/** Small building blocks shared by the admin pages. */

interface FieldProps {
  name: string;
  label: string;
  error?: string;
  hint?: string;
  /** Prefix for the element id, when one form appears several times on a page. */
  idPrefix?: string;
}

const ids = (p: FieldProps) => {
  const id = `${p.idPrefix ?? "f"}-${p.name}`;
  return { id, hint: `${id}-hint`, error: `${id}-error` };
};

const describedBy = (p: FieldProps) => {
  const i = ids(p);
  return [p.hint ? i.hint : "", p.error ? i.error : ""].filter(Boolean).join(" ") || undefined;
};

/** Label, control, hint and error, tied together for screen readers. */
function FieldShell(p: PropsWithChildren<FieldProps & { class?: string }>) {
  const i = ids(p);
  return (
    <div class={["field", p.error ? "has-error" : "", p.class ?? ""]}>
      <label for={i.id} safe>
        {p.label}
      </label>
      {p.children}
      {p.hint ? (
        <p class="hint" id={i.hint} safe>
          {p.hint}
        </p>
      ) : (
        ""
      )}
      {p.error ? (
        <p class="error" id={i.error} safe>
          {p.error}
        </p>
      ) : (
        ""
      )}
    </div>
  );
}

export function TextField(
  p: FieldProps & {
    value?: string;
    type?: "text" | "password" | "search" | "datetime-local";
    placeholder?: string;
    required?: boolean;
    inputmode?: "decimal" | "text";
    autocomplete?: string;
    class?: string;
  },
) {
  return (
    <FieldShell {...p}>
      <input
        id={ids(p).id}
        name={p.name}
        type={p.type ?? "text"}
        value={p.value}
        placeholder={p.placeholder}
        required={p.required}
        inputmode={p.inputmode}
        autocomplete={p.autocomplete ?? "off"}
        spellcheck="false"
        aria-invalid={p.error ? "true" : undefined}
        aria-describedby={describedBy(p)}
      />
    </FieldShell>
  );
}

export function TextArea(p: FieldProps & { value?: string; rows?: number; placeholder?: string; required?: boolean; class?: string }) {
  return (
    <FieldShell {...p}>
      <textarea
        id={ids(p).id}
        name={p.name}
        rows={String(p.rows ?? 3)}
        placeholder={p.placeholder}
        required={p.required}
        spellcheck="false"
        aria-invalid={p.error ? "true" : undefined}
        aria-describedby={describedBy(p)}
        safe
      >
        {p.value ?? ""}
      </textarea>
    </FieldShell>
  );
}

export function SelectField(p: FieldProps & { value?: string; options: readonly (string | [value: string, label: string])[]; class?: string }) {
  return (
    <FieldShell {...p}>
      <select id={ids(p).id} name={p.name} aria-invalid={p.error ? "true" : undefined} aria-describedby={describedBy(p)}>
        {p.options.map((o) => {
          const [value, label] = typeof o === "string" ? [o, o] : o;
          return (
            <option value={value} selected={value === (p.value ?? "")} safe>
              {label}
            </option>
          );
        })}
      </select>
    </FieldShell>
  );
}

export function Checkbox(p: { name: string; label: string; checked?: boolean; error?: string; idPrefix?: string }) {
  const id = `${p.idPrefix ?? "f"}-${p.name}`;
  return (
    <div class={["field", "check", p.error ? "has-error" : ""]}>
      <input type="checkbox" id={id} name={p.name} value="true" checked={p.checked} />
      <label for={id} safe>
        {p.label}
      </label>
      {p.error ? (
        <p class="error" safe>
          {p.error}
        </p>
      ) : (
        ""
      )}
    </div>
  );
}

export type Tone = "ok" | "info" | "warn" | "danger" | "muted";

export function Badge({ tone, text }: { tone: Tone; text: string }) {
  return (
    <span class={`badge ${tone}`} safe>
      {text}
    </span>
  );
}

/** A message in the page's flash area (or anywhere): polite for news, assertive for failures. */
export function Notice({ tone, title, children }: PropsWithChildren<{ tone: "ok" | "danger" | "info"; title?: string }>) {
  return (
    <div class={`notice ${tone}`} role={tone === "danger" ? "alert" : "status"}>
      {title ? (
        <p class="notice-title" safe>
          {title}
        </p>
      ) : (
        ""
      )}
      {children}
    </div>
  );
}

/** A form's error that belongs to no one field (the `(body)` entry of its field errors), or nothing. */
export function FormError({ text }: { text: string | undefined }) {
  return text ? (
    <Notice tone="danger">
      <p safe>{text}</p>
    </Notice>
  ) : (
    ""
  );
}

/** A one-line message for the flash area. */
export function FlashMessage({ tone, text }: { tone: "ok" | "danger"; text: string }) {
  return (
    <Notice tone={tone}>
      <p safe>{text}</p>
    </Notice>
  );
}

/**
 * A time, written in UTC on the server; admin.js rewrites it to the browser's
 * local time when the operator chose that (remembered per browser).
 */
export function Time({ at, text, compact, class: cls }: { at: string | number | null | undefined; text?: string; compact?: boolean; class?: string }) {
  if (at === null || at === undefined) return <span class={cls}>—</span>;
  const iso = new Date(at).toISOString();
  const shown = text ?? utc(iso);
  return (
    <time class={cls} datetime={iso} title={utc(iso)} data-time={compact ? "compact" : text === undefined ? "full" : "relative"} safe>
      {shown}
    </time>
  );
}
