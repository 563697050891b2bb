import { BareLayout } from "./layout.tsx";

export function LoginPage({ next, error, loggedOut }: { next?: string; error?: string; loggedOut?: boolean }) {
  return (
    <BareLayout title="Sign in">
      <div class="login card">
        <p class="brand big">
          <span class="brand-mark" aria-hidden="true"></span>Keybrake
        </p>
        <h1>Sign in to the admin pages</h1>
        {loggedOut ? (
          <p class="notice ok" role="status">
            You are signed out.
          </p>
        ) : (
          ""
        )}
        <form method="post" action="/admin/login" class="stack">
          <input type="hidden" name="next" value={next ?? ""} />
          <div class={["field", error ? "has-error" : ""]}>
            <label for="token">Management token</label>
            <input
              id="token"
              name="token"
              type="password"
              autocomplete="current-password"
              required
              autofocus
              spellcheck="false"
              aria-invalid={error ? "true" : undefined}
              aria-describedby={error ? "token-hint token-error" : "token-hint"}
            />
            <p class="hint" id="token-hint">
              The token printed at first start, <code>KEYBRAKE_ADMIN_TOKEN</code>, or one made with{" "}
              <code>keybrake token create --name you</code>.
            </p>
            {error ? (
              <p class="error" id="token-error" role="alert" safe>
                {error}
              </p>
            ) : (
              ""
            )}
          </div>
          <button class="btn primary" type="submit">
            Sign in
          </button>
        </form>
        <p class="fineprint">Sessions last 12 hours. The token itself is not kept in your browser.</p>
      </div>
    </BareLayout>
  );
}
