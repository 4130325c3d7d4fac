import type { AppError } from "./bindings";

/** The sentence to show for a failed command, whatever shape the failure had. */
export function describe(error: unknown): string {
  if (typeof error === "object" && error !== null && "message" in error) {
    return String((error as AppError).message);
  }
  return String(error);
}
