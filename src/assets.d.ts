// Files imported `with { type: "text" }` (migrations, htmx, CSS) are embedded in the binary as strings.
declare module "*.sql" {
  const text: string;
  export default text;
}
