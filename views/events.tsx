import { EVENT_TYPES, type presentEvent } from "../src/domain/events.ts";
import type { FieldErrors } from "../src/http/admin-forms.ts";
import { SelectField, TextField } from "./components.tsx";
import { href, utc } from "./format.ts";
import { Layout } from "./layout.tsx";

export type EventView = ReturnType<typeof presentEvent>;
export interface EventsFilterValues {
  type?: string;
  since?: string;
  until?: string;
}

export function EventsPage({ csrf, filter, errors, rows, nextCursor }: { csrf: string; filter: EventsFilterValues; errors: FieldErrors; rows: EventView[]; nextCursor: string | null }) {
  return (
    <Layout title="Events" section="events" csrf={csrf}>
      <div class="page-head">
        <div>
          <h1>Events</h1>
          <p class="lede">The operator trail: every management action and cap alert, who did it, to what and when (UTC). Newest first.</p>
        </div>
      </div>
      <form class="filters" method="get" action="/admin/events" role="search" aria-label="Filter events">
        <SelectField name="type" label="Type" value={filter.type} error={errors.type} options={[["", "Any type"], ...EVENT_TYPES.map((t) => [t, t] as [string, string])]} idPrefix="ev" />
        <TextField name="since" label="Since (UTC)" type="datetime-local" value={filter.since} error={errors.since} idPrefix="ev" />
        <TextField name="until" label="Until (UTC)" type="datetime-local" value={filter.until} error={errors.until} idPrefix="ev" />
        <div class="filter-actions">
          <button class="btn" type="submit">
            Filter
          </button>
          <a class="btn ghost" href="/admin/events">
            Clear
          </a>
        </div>
      </form>
      {rows.length === 0 ? (
        <div class="empty card">
          <p>No events match.</p>
        </div>
      ) : (
        <div class="table-wrap card flush">
          <table class="data events cardify">
            <caption class="sr-only">Events, newest first</caption>
            <thead>
              <tr>
                <th scope="col">When</th>
                <th scope="col">Type</th>
                <th scope="col">Who</th>
                <th scope="col">Target</th>
                <th scope="col">Details</th>
              </tr>
            </thead>
            <tbody>
              {rows.map((e) => (
                <tr>
                  <td data-label="When">
                    <time datetime={e.created_at} safe>
                      {utc(e.created_at)}
                    </time>
                  </td>
                  <td data-label="Type">
                    <span class="mono" safe>
                      {e.type}
                    </span>
                  </td>
                  <td data-label="Who">
                    {e.actor ? (
                      <>
                        <span safe>{e.actor.name}</span>
                        <div class="sub mono" safe>
                          {e.actor.token_id}
                        </div>
                      </>
                    ) : (
                      <span class="muted">Keybrake</span>
                    )}
                  </td>
                  <td data-label="Target">
                    <span class="mono" safe>
                      {e.target ?? "—"}
                    </span>
                  </td>
                  <td data-label="Details">
                    <code class="mono small event-data" safe>
                      {JSON.stringify(e.data)}
                    </code>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {nextCursor ? (
        <p class="pager">
          <a class="btn ghost small" href={href("/admin/events", { ...filter, cursor: nextCursor })}>
            Older events
          </a>
        </p>
      ) : (
        ""
      )}
    </Layout>
  );
}
