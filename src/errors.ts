/**
 * The closed set of management-API error codes and their HTTP statuses.
 * Every refusal on /vault, /vendors and /admin is an ApiError; one handler in
 * app.ts turns it into {"error": {code, message, details}}.
 */
export const ERROR_STATUS = {
  invalid_request: 400,
  invalid_json: 400,
  unauthorized: 401,
  forbidden: 403,
  policy_violation: 403,
  not_found: 404,
  conflict: 409,
  managed_by_env: 409,
  payload_too_large: 413,
  unsupported_media_type: 415,
  unprocessable: 422,
  internal_error: 500,
  unavailable: 503,
} as const;

export type ErrorCode = keyof typeof ERROR_STATUS;

export interface FieldIssue {
  field: string;
  message: string;
}

export class ApiError extends Error {
  readonly status: number;
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly details?: unknown,
  ) {
    super(message);
    this.status = ERROR_STATUS[code];
  }
}

export function errorBody(code: string, message: string, details?: unknown) {
  return { error: { code, message, details: details ?? null } };
}

/** zod issues → one entry per bad field, named by its dotted path. */
export function fieldIssues(issues: readonly { path: readonly PropertyKey[]; message: string }[]): FieldIssue[] {
  return issues.map((i) => ({
    field: i.path.length ? i.path.map(String).join(".") : "(body)",
    message: i.message,
  }));
}

export function validationError(issues: FieldIssue[]): ApiError {
  const fields = [...new Set(issues.map((i) => i.field))].join(", ");
  return new ApiError("invalid_request", `Invalid request: ${fields}`, issues);
}
