// Files imported `with { type: "text" }` (migrations, htmx, CSS) are embedded in the binary as strings.
declare module "*.sql" {
  const text: string;
  export default text;
}
declare module "*.svg" {
  const text: string;
  export default text;
}
declare module "*.css" {
  const text: string;
  export default text;
}
declare module "htmx.org/dist/htmx.min.js" {
  const text: string;
  export default text;
}
declare module "*/admin.js" {
  const text: string;
  export default text;
}
