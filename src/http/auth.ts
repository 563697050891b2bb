import type { Principal, Role } from "../domain/tokens.ts";
import { ApiError } from "../errors.ts";
import type { Services } from "../services.ts";
import { bearerToken } from "./request.ts";

/** The role sets of the management routes (SPEC §7). */
export const ADMIN: readonly Role[] = ["admin"];
/** Keys, their audit and spend: issuers see only the keys they issued. */
export const KEY_READERS: readonly Role[] = ["admin", "issuer", "viewer"];
export const KEY_WRITERS: readonly Role[] = ["admin", "issuer"];
/** Events, budgets, vendor status and metrics: everything an operator reads, which an issuer must not. */
export const OPERATOR_READERS: readonly Role[] = ["admin", "viewer"];

/**
 * The management principal of a request, refused unless its role is one of `roles`
 * (SPEC §7: only admin manages tokens, budgets, webhooks and vendor secrets). Resolves once the
 * settlements of the calls this replica has already answered are committed (they commit just after
 * their answers): whatever a request reads or changes next includes those calls.
 */
export async function authorize(s: Services, request: Request, roles: readonly Role[]): Promise<Principal> {
  const principal = await s.tokens.authenticate(bearerToken(request));
  if (!principal) {
    throw new ApiError("unauthorized", "Send a management token as Authorization: Bearer <token> (a vault key is not one).");
  }
  if (!roles.includes(principal.role)) {
    throw new ApiError("forbidden", `This needs a token with role ${roles.join(" or ")}; this token is ${principal.role}.`);
  }
  await s.forwarder.answeredSettled();
  return principal;
}
