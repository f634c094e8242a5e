// AXI-stream FIFO for a link between stages, DEPTH beats of {tlast, tkeep, tdata}, first-word fall-through.
// `level` is the current occupancy and `high_water` the largest occupancy since reset: the cosimulation
// reads it to size the link (Contract.fifo_depth).
`timescale 1ns/1ps
module axis_fifo #(
    parameter DATA_WIDTH = 32,
    parameter DEPTH      = 16
) (
    input  wire                    aclk,
    input  wire                    aresetn,
    input  wire [DATA_WIDTH-1:0]   s_axis_tdata,
    input  wire [DATA_WIDTH/8-1:0] s_axis_tkeep,
    input  wire                    s_axis_tvalid,
    output wire                    s_axis_tready,
    input  wire                    s_axis_tlast,
    output wire [DATA_WIDTH-1:0]   m_axis_tdata,
    output wire [DATA_WIDTH/8-1:0] m_axis_tkeep,
    output wire                    m_axis_tvalid,
    input  wire                    m_axis_tready,
    output wire                    m_axis_tlast,
    output reg  [31:0]             level,
    output reg  [31:0]             high_water
);
    localparam W = DATA_WIDTH + DATA_WIDTH / 8 + 1;
    localparam AW = (DEPTH > 1) ? $clog2(DEPTH) : 1;
    reg [W-1:0] mem [0:DEPTH-1];
    reg [AW-1:0] rd, wr;

    assign s_axis_tready = level != DEPTH;
    assign m_axis_tvalid = level != 0;
    assign {m_axis_tlast, m_axis_tkeep, m_axis_tdata} = mem[rd];

    wire push = s_axis_tvalid && s_axis_tready;
    wire pop = m_axis_tvalid && m_axis_tready;

    always @(posedge aclk) begin
        if (!aresetn) begin
            rd <= 0;
            wr <= 0;
            level <= 0;
            high_water <= 0;
        end else begin
            if (push) begin
                mem[wr] <= {s_axis_tlast, s_axis_tkeep, s_axis_tdata};
                wr <= (wr == DEPTH - 1) ? 0 : wr + 1'b1;
            end
            if (pop) rd <= (rd == DEPTH - 1) ? 0 : rd + 1'b1;
            level <= level + push - pop;
            if (level > high_water) high_water <= level;
        end
    end
endmodule
